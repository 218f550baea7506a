"""Values the database cannot hold never become a 500: NUL characters, huge integers.

PostgreSQL refuses NUL in text and JSON (`\\u0000`) and integers beyond bigint; SQLite refuses
integers beyond 64 bits. Every gated operation of the OpenAPI document gets them in each path
and query parameter, called by a role the route admits; a few write bodies get them too. Any
answer is fine but a 5xx (these were 500s on PostgreSQL before the DataError handler).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import bearer
from tests.hostile.conftest import PATH_VALUES, gated_routes

pytestmark = pytest.mark.hostile

NUL = "a\x00b"
HUGE = [str(2**63), str(2**64 + 1), str(-(2**63) - 1), "1e400"]


@pytest.fixture
def tokens(world: dict[str, Any], token_for: Any) -> dict[str, dict[str, str]]:
    return {
        "admin": bearer(token_for("admin")),
        "registrar": bearer(token_for("registrar", agency_id="VN-GDC")),
        "auditor": bearer(token_for("auditor")),
        "agency": bearer(token_for("agency", agency_id="HK-CED")),
        "focal_point": bearer(token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01")),
    }


def _query_params(spec: dict[str, Any], method: str, path: str) -> list[tuple[str, str]]:
    op = spec["paths"].get(path, {}).get(method.lower(), {})
    out = []
    for param in op.get("parameters", []):
        if param.get("in") != "query":
            continue
        schema = param.get("schema", {})
        kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
        items = schema.get("items", {})
        out.append(
            (
                param["name"],
                "integer"
                if "integer" in kinds
                else "string"
                if "string" in kinds or items.get("type") == "string"
                else "other",
            )
        )
    return out


def test_nul_and_huge_numbers_in_parameters(
    app: Any, client: Any, tokens: dict[str, dict[str, str]]
) -> None:
    import re

    spec = app.openapi()
    tried = 0
    failures = []
    for method, path, roles in gated_routes(app):
        headers = next(tokens[r.value] for r in sorted(roles, key=lambda r: r.value))
        base = re.sub(r"\{(\w+)(:path)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)
        urls = []
        for name in re.findall(r"\{(\w+)", path):  # NUL in each path parameter
            value = PATH_VALUES.get(name, "x")
            urls.append(base.replace(value, quote(value[:2] + NUL), 1))
        for name, kind in _query_params(spec, method, path):
            values = HUGE if kind == "integer" else [NUL]
            urls += [f"{base}?{name}={quote(v)}" for v in values]
        for url in urls:
            response = client.request(method, url, headers=headers, json={})
            tried += 1
            if response.status_code >= 500:
                failures.append(f"{method} {url}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert tried >= 40
    print(f"\ninput hygiene: {tried} parameter probes, no 5xx")


BODIES = [
    (
        "POST",
        "/v1/admin/agencies",
        {"id": "XX-NUL", "name": NUL, "country": "VN", "kind": "customs"},
    ),
    (
        "POST",
        "/v1/admin/focal-points/VN-GDC/fp-hcm-01/designations",
        {"agreement": "VN-HK-CMAA-2013" + NUL, "valid_from": "2024-01-01"},
    ),
    ("POST", "/v1/admin/principals", {"name": "p" + NUL, "role": "admin"}),
    ("POST", "/v1/admin/agencies/VN-GDC/focal-points", {"id": "VN-GDC/fp-x", "name": NUL}),
    ("POST", "/v1/admin/keys", {"agency_id": "VN-GDC", "jwk": {"kty": NUL}}),
    ("POST", "/v1/messages:check", {"routing": {"sender": NUL, "iat": 2**70}}),
    ("POST", "/v1/messages", {"envelope": "eyJ" + NUL + ".e30.AA"}),
    ("POST", "/v1/admin/world", {"agencies": [{"id": "XX-NUL", "name": NUL}]}),
]


def test_nul_in_bodies(client: Any, tokens: dict[str, dict[str, str]]) -> None:
    for method, path, body in BODIES:
        who = "focal_point" if path.startswith("/v1/messages") else "admin"
        response = client.request(method, path, headers=tokens[who], json=body)
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json", path


def test_duplicate_member_names_are_refused(client: Any, tokens: dict[str, dict[str, str]]) -> None:
    """Issue 15.6: `{"envelope": "a.b.c", "envelope": "<valid>"}` was accepted (last wins).

    400 `request.malformed`, like any body that is not JSON, naming the member.

    Both ways a body is read: a route that parses it itself (submit, after authentication)
    and a declared FastAPI body (an administrator's agency registration).
    """
    fp, admin = tokens["focal_point"], tokens["admin"]
    cases = [
        ("/v1/messages", '{"envelope": "a.b.c", "envelope": "x.y.z"}', fp),
        ("/v1/admin/agencies", '{"id": "XX-ONE", "id": "XX-TWO", "name": "Twice"}', admin),
        ("/v1/messages", '{"outer": {"envelope": "a", "envelope": "b"}}', fp),  # nested too
    ]
    for url, body, headers in cases:
        headers = {**headers, "content-type": "application/json", "idempotency-key": "k" * 16}
        answer = client.post(url, content=body, headers=headers)
        problem = answer.json()
        assert (answer.status_code, problem["code"]) == (400, "request.malformed"), problem
        assert "duplicate member name" in problem["errors"][0]["detail"], problem


def test_every_api_route_parses_bodies_strictly(app: Any) -> None:
    """A router created without `route_class=StrictJSONRoute` would read bodies leniently."""
    from fastapi.routing import APIRoute, _iter_included_route_candidates

    from broker.console.router import ConsoleRoute
    from broker.deps import StrictJSONRoute

    lenient = [
        route.path
        for route in _iter_included_route_candidates(app.routes)
        if isinstance(route, APIRoute)
        and not isinstance(route, StrictJSONRoute | ConsoleRoute)
        and route.path != "/docs"  # the Swagger UI page: a GET without a body
    ]
    assert not lenient, lenient


@pytest.mark.parametrize("after", ["\u00b2", "\u0663", "\uff11", "1\u00b2"])
def test_digits_of_other_scripts_are_refused_not_a_500(
    client: Any, tokens: dict[str, dict[str, str]], after: str
) -> None:
    """Issue 15.3: `GET /v1/inbox?after=%C2%B2` was a 500 (str.isdigit accepts it, int does not)."""
    answer = client.get(f"/v1/inbox?after={quote(after)}", headers=tokens["agency"])
    assert (answer.status_code, answer.json()["code"]) == (400, "inbox.bad_cursor"), answer.text
