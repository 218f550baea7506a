"""Conventions every client relies on: problem+json, request ids, probes, docs, metrics."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.conftest import SCRAPER, bearer


def test_health_and_readiness(client: Any) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/v1/nothing-here", 404, "request.not_found"),
        ("delete", "/v1/me", 405, "request.method_not_allowed"),
        ("get", "/health/nothing", 404, "request.not_found"),
    ],
)
def test_unknown_routes_are_problems(
    client: Any, method: str, path: str, status: int, code: str
) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"urn:exchange-broker:problem:{code}"
    assert body["request_id"] == response.headers["x-request-id"]


def test_validation_errors_point_at_fields(
    client: Any, world: Any, admin_headers: dict[str, str]
) -> None:
    response = client.post(
        "/v1/admin/agencies",
        headers=admin_headers,
        json={"id": "lower-case", "name": "X", "country": "VN", "kind": "navy", "extra": 1},
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "request.invalid"
    pointers = {e["pointer"] for e in problem["errors"]}
    assert {"/body/id", "/body/name", "/body/kind", "/body/extra"} <= pointers


def test_malformed_json_is_400(client: Any, admin_headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/admin/agencies",
        headers={**admin_headers, "content-type": "application/json"},
        content=b'{"id": ',
    )
    assert response.status_code == 400
    assert response.json()["code"] == "request.malformed"


def test_oversized_body_is_413_before_parsing(client: Any, admin_headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/admin/agencies", headers=admin_headers, content=b"x" * (1024 * 1024 + 1)
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request.too_large"


def test_request_id_is_echoed_or_made(client: Any) -> None:
    assert (
        client.get("/health/live", headers={"x-request-id": "trace-0001-abcd"}).headers[
            "x-request-id"
        ]
        == "trace-0001-abcd"
    )
    made = client.get("/health/live", headers={"x-request-id": "bad id\n"}).headers["x-request-id"]
    assert made != "bad id\n"
    assert len(made) == 36


def test_api_responses_are_not_cached(client: Any, world: Any, token_for: Any) -> None:
    response = client.get("/v1/me", headers=bearer(token_for("agency", agency_id="HK-CED")))
    assert response.headers["cache-control"] == "no-store"


def test_docs_are_served_without_a_cdn(client: Any) -> None:
    html = client.get("/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    # Every asset the page asks for is served (the icon was missing once).
    import re

    assets = set(re.findall(r"""["'](/static/[^"']+)["']""", html))
    assert len(assets) >= 3  # script, stylesheet, icon
    assert {a: client.get(a).status_code for a in assets} == dict.fromkeys(assets, 200)


def test_openapi_has_an_example_for_every_request_body(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            if "examples" in body or "example" in body:
                continue
            ref = body["schema"].get("$ref", "")
            schema = schemas.get(ref.split("/")[-1], body["schema"])
            props = schema.get("properties", {})
            if not props or not any("examples" in p or "default" in p for p in props.values()):
                missing.append(f"{method.upper()} {path}")
    assert missing == []


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_count_requests_by_route_template(client: Any, world: Any, token_for: Any) -> None:
    headers = bearer(token_for("agency", agency_id="HK-CED"))
    mid = "0b7e5f0c-1d2e-4c3b-9a8f-000000000001"
    template = "/v1/messages/{mid}"
    before = client.get("/metrics", headers=SCRAPER)
    assert before.headers["content-type"].startswith("text/plain")
    client.get(f"/v1/messages/{mid}", headers=headers)  # unknown message: 404
    client.get("/health/live")
    client.get("/v1/nothing-here")
    after = client.get("/metrics", headers=SCRAPER).text

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before.text, name, **labels)

    # The template, not the path: one series per route however many message ids there are.
    assert delta("http_requests_total", method="GET", status="4xx", handler=template) == 1
    assert _sample(after, "http_requests_total", handler=f"/v1/messages/{mid}") == 0
    assert delta("http_request_duration_seconds_count", method="GET", handler=template) == 1
    assert delta("http_response_size_bytes_count", handler=template) == 1
    assert delta("http_response_size_bytes_sum", handler=template) > 0
    # No route matched: one series for all of them; probes and scrapes are not counted.
    assert delta("http_requests_total", method="GET", status="4xx", handler="none") == 1
    assert _sample(after, "http_requests_total", handler="/health/live") == 0
    assert _sample(after, "http_requests_total", handler="/metrics") == 0
    # The delivery gauges are on the same page.
    assert "broker_delivery_metrics_up" in after


def test_metrics_name_a_mount_by_its_path(client: Any) -> None:
    before = client.get("/metrics", headers=SCRAPER).text
    assert client.get("/static/swagger/LICENSE").status_code == 200
    after = client.get("/metrics", headers=SCRAPER).text
    count = _sample(after, "http_requests_total", method="GET", status="2xx", handler="/static")
    assert count - _sample(before, "http_requests_total", handler="/static") == 1


def test_logs_never_contain_tokens(
    client: Any, world: Any, token_for: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker.logging import configure_logging

    configure_logging("INFO", json=True)
    token = token_for("agency", agency_id="HK-CED")
    client.get("/v1/me", headers=bearer(token))
    client.get("/v1/me", headers=bearer(token + "x"))
    err = capsys.readouterr().err
    assert '"path": "/v1/me"' in err
    assert token not in err
    logging.getLogger().setLevel("WARNING")


def test_refuses_to_start_on_an_unmigrated_database(backend: str, tmp_path: Any) -> None:
    from broker import config, db, migrations_check

    saved = config.settings()
    try:
        config.configure(database_url=f"sqlite:///{tmp_path / 'empty.db'}", data_dir=tmp_path)
        db.reset_engine()
        with pytest.raises(migrations_check.NotMigrated, match="broker migrate"):
            db.run(migrations_check.require_current)
    finally:
        config.configure(**saved.model_dump())
        db.reset_engine()


def test_the_start_up_heap_is_frozen_out_of_the_garbage_collector(
    app: Any, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection of a started app took 140-260 ms: the p99 of a busy API (runtime.py)."""
    import gc

    from fastapi.testclient import TestClient

    from broker import config, runtime

    assert gc.get_freeze_count() == 0  # the tests' settings turn it off
    cfg = config.settings().model_copy(update={"gc_freeze": True})
    monkeypatch.setattr(runtime, "settings", lambda: cfg)
    try:
        with TestClient(app) as c:
            assert gc.get_freeze_count() > 10_000  # the application and its imports
            assert c.get("/health/live").status_code == 200
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/messages"), ("GET", "/v1/inbox"), ("POST", "/v1/inbox/x/ack")],
)
def test_hot_paths_are_matched_by_the_first_routers(app: Any, method: str, path: str) -> None:
    """Each included router tried before the right one costs ~14 µs of every request."""
    from starlette.routing import Match

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    matched = [i for i, r in enumerate(app.router.routes) if r.matches(scope)[0] == Match.FULL]
    assert matched
    assert matched[0] <= 2  # after /openapi.json (and the messages router, for the inbox)
