"""Push delivery to a partner's endpoint: a tiny HTTP server on 127.0.0.1 plays the partner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from broker import db, keyring
from broker.audit.models import AuditEvent
from broker.config import Environment, settings
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from broker.ids import utcnow
from broker.inbox import repository as outbox
from broker.inbox import service as inbox
from broker.messages.models import Delivery, Outbox
from broker.push import service
from broker.push.models import PushAttempt
from broker.push.schemas import PushEndpointIn
from tests.conftest import bearer
from tests.inbox.conftest import HK, submit
from tests.inbox.stack import ROOT
from tests.messages.conftest import Exchange


@dataclass
class Partner:
    """Records every POST and answers with the next scripted status (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    retry_after: str | None = None
    url: str = ""


@pytest.fixture
def partner() -> Iterator[Partner]:
    state = Partner()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            if state.retry_after is not None:
                self.send_header("Retry-After", state.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/broker/push"
    yield state
    server.shutdown()
    server.server_close()


def register(url: str, agency: str = HK, enabled: bool = True) -> None:
    db.call(service.set_endpoint, agency, PushEndpointIn(url=url, enabled=enabled), actor="test")


def deliver_due() -> int:
    """One push run, as the task and the ticker run it."""
    return db.run(service.deliver_due, db.session_scope)


def relay_and_push() -> int:
    db.run(inbox.relay_all, db.session_scope)
    return deliver_due()


def push_rows() -> list[Outbox]:
    return list(db.call(outbox.outbox_rows, "push"))


def attempts() -> list[tuple[int, str, int | None]]:
    found = db.call(lambda s: s.scalars(select(PushAttempt).order_by(PushAttempt.started_at)))
    return [(a.attempt, a.status, a.http_status) for a in found]


def pushed_events() -> list[tuple[int, str, int | None]]:
    details = db.call(
        lambda s: s.scalars(select(AuditEvent.details).where(AuditEvent.kind == "msg.pushed"))
    )
    return sorted((d["attempt"], d["status"], d["http_status"]) for d in details)


def make_due() -> None:
    db.call(
        lambda s: s.execute(
            update(Outbox)
            .where(Outbox.topic == "push")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    )


def test_an_available_delivery_is_pushed_signed_by_the_broker(
    keys: Exchange, partner: Partner
) -> None:
    register(partner.url)
    mid = submit(keys, keys.routing())
    assert relay_and_push() == 1
    ((headers, body),) = partner.received
    item = json.loads(body)
    assert item["mid"] == mid
    assert item["seq"] == 1
    assert sha256_b64u(item["envelope"].encode()) == item["envelope_sha256"]
    # The partner checks the broker's signature with the receipt key it pinned.
    claims = env.verify_compact(
        headers["broker-signature"], keyring.load_or_create().receipt.public.jwk, service.TYP_PUSH
    )
    assert {k: claims[k] for k in ("mid", "recipient", "envelope_sha256", "seq")} == {
        "mid": mid,
        "recipient": HK,
        "envelope_sha256": item["envelope_sha256"],
        "seq": 1,
    }
    assert isinstance(claims["at"], int)
    assert attempts() == [(1, "delivered", 200)]
    assert pushed_events() == [(1, "delivered", 200)]
    assert [r.done_at is not None for r in push_rows()] == [True]
    # Polling stays the source of truth: the push changed no delivery state.
    assert list(db.call(lambda s: s.scalars(select(Delivery.state)))) == ["available"]
    assert deliver_due() == 0


def test_server_errors_are_retried_with_backoff_in_the_database(
    keys: Exchange, partner: Partner
) -> None:
    register(partner.url)
    partner.statuses = [503, 429]
    partner.retry_after = "120"
    submit(keys, keys.routing())
    relay_and_push()
    (row,) = push_rows()
    assert row.done_at is None
    assert row.attempts == 1
    assert row.last_error == "HTTP 503"
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > utcnow() + timedelta(seconds=100)  # Retry-After honoured
    assert deliver_due() == 0  # not due yet
    make_due()
    partner.retry_after = None
    deliver_due()
    make_due()
    deliver_due()
    assert attempts() == [(1, "retry", 503), (2, "retry", 429), (3, "delivered", 200)]
    assert pushed_events() == [(1, "retry", 503), (2, "retry", 429), (3, "delivered", 200)]
    assert len(partner.received) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_a_refusal_is_not_retried(keys: Exchange, partner: Partner, status: int) -> None:
    register(partner.url)
    partner.statuses = [status]
    submit(keys, keys.routing())
    relay_and_push()
    make_due()
    assert deliver_due() == 0
    (row,) = push_rows()
    assert row.dead_at is not None
    assert attempts() == [(1, "failed", status)]
    assert pushed_events() == [(1, "failed", status)]


def test_after_the_last_attempt_it_is_dead_lettered_and_an_operator_redelivers(
    keys: Exchange, partner: Partner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        service, "settings", lambda: settings().model_copy(update={"push_max_attempts": 3})
    )
    register(partner.url)
    partner.statuses = [500, 500, 500]
    mid = submit(keys, keys.routing())
    relay_and_push()
    for _ in range(4):
        make_due()
        deliver_due()
    assert attempts() == [(1, "retry", 500), (2, "retry", 500), (3, "dead", 500)]
    (row,) = push_rows()
    assert row.dead_at is not None
    # `broker admin push redeliver MID --agency HK-CED`, on the broker host.
    from broker.cli.main import app

    result = CliRunner().invoke(app, ["admin", "push", "redeliver", mid, "--agency", HK])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["action"] == "rearmed"
    deliver_due()
    assert attempts()[-1] == (1, "delivered", 200)
    assert [r.done_at is not None for r in push_rows()] == [True]
    (event,) = db.call(
        lambda s: s.scalars(select(AuditEvent).where(AuditEvent.kind == "msg.push_redeliver"))
    )
    assert event.details["action"] == "rearmed"
    assert event.actor.startswith("cli:")
    # Redelivering a delivered push queues a new one.
    (again,) = db.call(service.redeliver, uuid.UUID(mid), HK, actor="test")
    assert again.action == "queued"
    deliver_due()
    assert len(partner.received) == 5


def test_an_unreachable_endpoint_is_retried(keys: Exchange, partner: Partner) -> None:
    register("http://127.0.0.1:9/nothing-listens-here")
    submit(keys, keys.routing())
    relay_and_push()
    ((attempt, status, http_status),) = attempts()
    assert (attempt, status, http_status) == (1, "retry", None)
    (row,) = push_rows()
    assert row.last_error is not None
    assert "ConnectError" in row.last_error


def test_only_enabled_endpoints_get_pushes(keys: Exchange, partner: Partner) -> None:
    register(partner.url, enabled=False)
    register(partner.url, agency="KR-KCS")
    submit(keys, keys.routing())
    relay_and_push()
    assert push_rows() == []
    assert partner.received == []


def test_a_worker_lost_mid_post_is_recorded_and_the_push_retried(
    keys: Exchange, partner: Partner
) -> None:
    register(partner.url)
    mid = submit(keys, keys.routing())
    db.run(inbox.relay_all, db.session_scope)
    cfg = settings()
    crashed = subprocess.run(
        [sys.executable, "-c", "from broker.push import jobs; jobs.deliver()"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")},
            "BROKER_DATABASE_URL": cfg.sqlalchemy_url,
            "BROKER_DATA_DIR": str(cfg.data_dir),
            "BROKER_KEYS_DIR": str(cfg.broker_keys_dir),
            "BROKER_CRASH_AT": "push.after_post",
        },
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    assert len(partner.received) == 1  # it was POSTed, but the outcome never recorded
    assert attempts() == [(1, "sending", None)]
    assert deliver_due() == 0  # leased: not due until the lease ends
    make_due()  # the lease runs out
    deliver_due()
    assert attempts() == [(1, "lost", None), (2, "delivered", 200)]
    assert pushed_events() == [(1, "lost", None), (2, "delivered", 200)]
    # At least once: the partner got it twice and deduplicates on (sender, mid).
    assert [json.loads(b)["mid"] for _, b in partner.received] == [mid, mid]


def test_admin_sets_and_reads_the_endpoint_over_http(
    client: Any, world: dict[str, Any], token_for: Any
) -> None:
    admin = bearer(token_for("admin"))
    url = "/v1/admin/agencies/HK-CED/push"
    assert client.get(url, headers=admin).status_code == 404
    put = client.put(url, json={"url": "https://hk.example/push", "enabled": True}, headers=admin)
    assert put.status_code == 200, put.text
    assert put.json()["url"] == "https://hk.example/push"
    got = client.get(url, headers=admin).json()
    assert (got["url"], got["enabled"]) == ("https://hk.example/push", True)
    off = client.put(url, json={"url": "https://hk.example/push", "enabled": False}, headers=admin)
    assert off.json()["enabled"] is False
    bad = client.put(url, json={"url": "ftp://hk.example/x", "enabled": True}, headers=admin)
    assert (bad.status_code, bad.json()["code"]) == (422, "push.bad_url")
    assert (
        client.put(
            "/v1/admin/agencies/XX-NONE/push", json={"url": "https://x.example"}, headers=admin
        ).status_code
        == 404
    )
    agency = bearer(token_for("agency", agency_id="HK-CED"))
    assert client.put(url, json={"url": "https://evil.example"}, headers=agency).status_code == 403


def test_https_is_required_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    service.check_url("http://127.0.0.1:8080/push")  # development: tests use plain http
    production = settings().model_copy(update={"environment": Environment.production})
    monkeypatch.setattr(service, "settings", lambda: production)
    with pytest.raises(service.BadPushUrl):
        service.check_url("http://partner.example/push")
    service.check_url("https://partner.example/push")
    for bad in (
        "https://user:pw@partner.example/",
        "https:///nohost",
        "https://p.example/#x",
        "https://[::1/x",
        "https://p.example:99999/",
        "https://p.example/\u00e9",
        "https://p.example/a b",
    ):
        with pytest.raises(service.BadPushUrl):
            service.check_url(bad)


def test_backoff_grows_with_jitter_and_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = settings().model_copy(update={"push_backoff_base_s": 5.0, "push_backoff_max_s": 60.0})
    monkeypatch.setattr(service, "settings", lambda: cfg)
    for attempt, full in [(1, 5.0), (2, 10.0), (3, 20.0), (5, 60.0), (30, 60.0)]:
        delays = {service.backoff(attempt).total_seconds() for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered
    assert service.backoff(1, retry_after_s=30).total_seconds() == 30
    assert service.backoff(1, retry_after_s=10_000).total_seconds() == 60


def test_retry_after_is_ascii_digits_only() -> None:
    assert service._retry_after("120") == 120.0
    assert service._retry_after(" 7 ") == 7.0
    # HTTP-dates and anything else fall back to the backoff; so do other scripts' digits.
    for value in (None, "", "Wed, 21 Oct 2015 07:28:00 GMT", "1.5", "-1", "\u0661\u0662", "\u00b2"):
        assert service._retry_after(value) is None
