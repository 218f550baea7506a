"""Push delivery to a partner's endpoint: a tiny HTTP server on 127.0.0.1 plays the partner.

The broker refuses internal destinations (broker/push/destinations.py), so the tests that push
to 127.0.0.1 admit loopback explicitly (`partner`), as an operator does with
BROKER_PUSH_ALLOWED_NETWORKS; names are resolved by a fake at the resolver boundary.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import httpx2
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from broker import config, db, keyring
from broker.audit.models import AuditEvent
from broker.config import Environment, Settings, settings
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from broker.ids import utcnow
from broker.inbox import repository as outbox
from broker.inbox import service as inbox
from broker.messages.models import Delivery, Outbox
from broker.push import destinations, service
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
    location: str | None = None
    url: str = ""


def allow(monkeypatch: pytest.MonkeyPatch, *networks: str) -> None:
    """Admit internal networks, as BROKER_PUSH_ALLOWED_NETWORKS does."""
    cfg = settings().model_copy(update={"push_allowed_networks": [ip_network(n) for n in networks]})
    monkeypatch.setattr(config, "_override", [cfg])


@dataclass
class Resolver:
    """Stands in for the system resolver (`destinations.resolve`): names to addresses."""

    table: dict[str, list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[IPv4Address | IPv6Address]:
        self.asked.append((host, port))
        if host not in self.table:
            if not host.endswith((".test", ".example")):
                return await SYSTEM_RESOLVE(host, port)  # localhost, numeric forms
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(a) for a in self.table[host]]


def resolving(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> Resolver:
    resolver = Resolver(table)
    monkeypatch.setattr(destinations, "resolve", resolver)
    return resolver


SYSTEM_RESOLVE = destinations.resolve
PUBLIC = "93.184.215.14"  # a global address; no test connects to it


@pytest.fixture
def partner(receiver: Partner, monkeypatch: pytest.MonkeyPatch) -> Partner:
    """The receiver on 127.0.0.1, admitted as an internal receiver."""
    allow(monkeypatch, "127.0.0.0/8")
    return receiver


@pytest.fixture
def receiver() -> Iterator[Partner]:
    """A partner endpoint on 127.0.0.1 (which the broker refuses unless it is allowed)."""
    state = Partner()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            if state.retry_after is not None:
                self.send_header("Retry-After", state.retry_after)
            if state.location is not None:
                self.send_header("Location", state.location)
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


def attempt_errors() -> list[str | None]:
    found = db.call(lambda s: s.scalars(select(PushAttempt).order_by(PushAttempt.started_at)))
    return [a.error for a in found]


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
    # No answer is recorded as such, whatever the network said (the log has the detail).
    assert row.last_error == "push.no_response"
    assert attempt_errors() == ["push.no_response"]


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
            "BROKER_KEY_PASSPHRASE": cfg.key_passphrase,  # the broker keys this process made
            "BROKER_CRASH_AT": "push.after_post",
            "BROKER_PUSH_ALLOWED_NETWORKS": "127.0.0.0/8",
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
    client: Any, world: dict[str, Any], token_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolving(monkeypatch, {"hk.example": [PUBLIC]})
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


# --- destinations: no internal addresses, no DNS rebinding (issue 15) -----------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("168.63.129.16", "a cloud metadata address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("192.168.0.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("100.64.0.1", "a shared (CGNAT) address"),
        ("fd12:3456::1", "a unique-local address"),
        ("fe80::1", "a link-local address"),
        ("169.254.1.1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "the unspecified address"),  # noqa: S104 - an address checked, not bound
        ("::", "the unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("192.0.0.9", "a reserved address"),
        ("fec0::1", "a site-local address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "a private address"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64
        ("64:ff9b::a00:1", "a private address"),
        ("::127.0.0.1", "a reserved address"),  # IPv4-compatible (deprecated)
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # DNS64 for a public IPv4 host
        ("2002:808:808::", None),
    ],
)
def test_the_address_classes_a_push_may_not_reach(address: str, why: str | None) -> None:
    assert destinations.refusal(ip_address(address)) == why


INTERNAL_URLS = [
    "http://169.254.169.254/latest/meta-data",
    "http://127.0.0.1:6379/",
    "http://10.0.0.5/push",
    "http://[::1]:8080/push",
    "http://[::ffff:127.0.0.1]:6379/",
    "http://0.0.0.0:6379/",
    "https://localhost/push",  # the system resolver, /etc/hosts
    "http://2130706433:6379/",  # 127.0.0.1 in the resolver's decimal form
    "https://intranet.test/push",
    "https://mixed.test/push",  # one private address among public ones is enough
]


def test_registering_an_internal_destination_is_refused(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolving(monkeypatch, {"intranet.test": ["10.20.30.40"], "mixed.test": [PUBLIC, "10.0.0.7"]})
    admitted = []
    for url in INTERNAL_URLS:
        try:
            register(url)
        except destinations.DestinationForbidden:
            continue
        admitted.append(url)
    assert admitted == []
    assert db.call(service.repository.endpoint, HK) is None


def test_a_refusal_names_the_class_of_address_not_the_address(
    client: Any, world: dict[str, Any], token_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolving(monkeypatch, {"intranet.test": ["10.20.30.40"]})
    admin = bearer(token_for("admin"))
    url = "/v1/admin/agencies/HK-CED/push"
    for target, why, secret in [
        ("http://169.254.169.254/latest/meta-data", "is a cloud metadata address", "169.254"),
        ("https://intranet.test/push", "resolves to a private address", "10.20.30.40"),
    ]:
        put = client.put(url, json={"url": target}, headers=admin)
        problem = put.json()
        assert (put.status_code, problem["code"]) == (422, "push.destination_forbidden")
        assert why in problem["detail"]
        assert secret not in put.text
        assert [e["pointer"] for e in problem["errors"]] == ["/url"]
    assert client.get(url, headers=admin).status_code == 404


def test_the_allowlist_admits_a_listed_private_range(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolving(monkeypatch, {"intranet.test": ["10.20.30.40"]})
    with pytest.raises(destinations.DestinationForbidden):
        register("http://10.1.2.3/push")
    allow(monkeypatch, "10.0.0.0/8", "169.254.0.0/16")
    register("http://10.1.2.3/push")
    register("https://intranet.test/push")
    assert db.call(service.get_endpoint, HK).url == "https://intranet.test/push"
    # Only what is listed; and never a metadata endpoint, even inside a listed range.
    for url in ("http://127.0.0.1/push", "http://172.16.0.1/push", "http://169.254.169.254/"):
        with pytest.raises(destinations.DestinationForbidden):
            register(url)


def test_an_endpoint_refused_now_can_still_be_disabled(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One registered before the check (or under a wider allowlist) is switched off as it is."""
    with monkeypatch.context() as wider:
        allow(wider, "10.0.0.0/8")
        register("http://10.1.2.3/push")
    with pytest.raises(destinations.DestinationForbidden):
        register("http://10.1.2.3/push")
    register("http://10.1.2.3/push", enabled=False)
    assert db.call(service.get_endpoint, HK).enabled is False


def test_the_allowlist_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PUSH_ALLOWED_NETWORKS", " 10.0.0.0/8, fd00::/8 ")
    assert Settings().push_allowed_networks == [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]
    monkeypatch.setenv("BROKER_PUSH_ALLOWED_NETWORKS", "")
    assert Settings().push_allowed_networks == []
    monkeypatch.setenv("BROKER_PUSH_ALLOWED_NETWORKS", "10.0.0.1/8")  # host bits: a typo
    with pytest.raises(ValueError, match="not a valid IPv4 or IPv6 network"):
        Settings()


@pytest.mark.parametrize("listening", [True, False])
def test_a_name_rebound_to_an_internal_address_is_refused_at_the_attempt(
    keys: Exchange, receiver: Partner, monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    port = int(receiver.url.split(":")[2].split("/")[0]) if listening else 9
    resolver = resolving(monkeypatch, {"partner.test": [PUBLIC]})
    register(f"http://partner.test:{port}/broker/push")  # public when registered
    submit(keys, keys.routing())
    resolver.table["partner.test"] = ["127.0.0.1"]  # rebound before the attempt
    relay_and_push()
    assert resolver.asked == [("partner.test", port)] * 2  # resolved again at the attempt
    assert receiver.received == []
    # Refused without a connection: the same record whether anything listens on the port.
    assert attempts() == [(1, "failed", None)]
    assert attempt_errors() == ["push.destination_forbidden"]
    assert pushed_events() == [(1, "failed", None)]
    (row,) = push_rows()
    assert (row.dead_at is not None, row.last_error) == (True, "push.destination_forbidden")
    details = db.call(
        lambda s: s.scalars(select(AuditEvent.details).where(AuditEvent.kind == "msg.pushed"))
    )
    assert "127.0.0.1" not in json.dumps(list(details))


def test_the_push_connects_to_the_checked_address_and_names_the_host(
    keys: Exchange, partner: Partner, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(partner.url.split(":")[2].split("/")[0])
    # partner.test exists only in this resolver: the POST can reach the partner only through
    # the address that was checked. ::1 first: nothing listens there, so the next checked
    # address is tried.
    allow(monkeypatch, "127.0.0.0/8", "::1/128")
    resolving(monkeypatch, {"partner.test": ["::1", "127.0.0.1"]})
    register(f"http://partner.test:{port}/broker/push")
    submit(keys, keys.routing())
    assert relay_and_push() == 1
    ((headers, _),) = partner.received
    assert headers["host"] == f"partner.test:{port}"
    assert attempts() == [(1, "delivered", 200)]


def test_redirects_are_not_followed(keys: Exchange, partner: Partner) -> None:
    """A guard (the client never followed redirects): a 3xx is an answer, not a new target."""
    partner.statuses = [302]
    partner.location = "http://169.254.169.254/latest/meta-data"
    register(partner.url)
    submit(keys, keys.routing())
    relay_and_push()
    assert attempts() == [(1, "retry", 302)]
    assert len(partner.received) == 1


# --- TLS: the name is what SNI and the certificate check use --------------------------------


@dataclass
class TlsPartner:
    port: int
    trust: ssl.SSLContext  # the client side: trusts the partner's self-signed certificate
    sni: list[str | None]
    hosts: list[str]


@pytest.fixture
def tls_partner(monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsPartner]:
    """An HTTPS partner on 127.0.0.1 whose certificate names only a.test (no IP address)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp = config.settings().data_dir
    cert_file, key_file = tmp / "tls-partner.crt", tmp / "tls-partner.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sni: list[str | None] = []
    hosts: list[str] = []
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    server_tls.sni_callback = lambda _sock, server_name, _ctx: sni.append(server_name)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a pooled connection could be reused

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    allow(monkeypatch, "127.0.0.0/8")
    resolving(monkeypatch, {"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    trust = ssl.create_default_context(cafile=str(cert_file))
    yield TlsPartner(server.server_address[1], trust, sni, hosts)
    server.shutdown()
    server.server_close()


def a_claim(url: str) -> service.Claim:
    return service.Claim(
        outbox_id=0,
        attempt_id=uuid.uuid4(),
        attempt=1,
        delivery_id=uuid.uuid4(),
        recipient=HK,
        url=url,
        seq=1,
        mid=uuid.uuid4(),
        sender="VN-GDC",
        envelope_sha256="-",
        body=b"{}",
    )


def test_tls_goes_to_the_checked_address_with_the_name_for_sni_and_the_certificate(
    clean_db: str, tls_partner: TlsPartner
) -> None:
    url = f"https://a.test:{tls_partner.port}/push"

    async def push() -> service.Outcome:
        async with httpx2.AsyncClient(verify=tls_partner.trust, trust_env=False) as client:
            return await service.post(client, a_claim(url))

    assert db.run(push) == service.Outcome(200, None)
    assert tls_partner.sni == ["a.test"]
    assert tls_partner.hosts == [f"a.test:{tls_partner.port}"]


def test_each_name_gets_its_own_connections(clean_db: str, tls_partner: TlsPartner) -> None:
    """b.test resolves to the same address as a.test, whose certificate does not name it."""
    a, b = (f"https://{h}.test:{tls_partner.port}/push" for h in "ab")

    async def push(clients: service.Clients | None) -> list[service.Outcome]:
        shared = httpx2.AsyncClient(verify=tls_partner.trust, trust_env=False)
        try:
            pick = clients.get if clients is not None else lambda _url: shared
            return [await service.post(pick(u), a_claim(u)) for u in (a, b)]
        finally:
            await shared.aclose()
            if clients is not None:
                await clients.aclose()

    # One client for both names would reuse a.test's verified connection for b.test ...
    assert [o.http_status for o in db.run(push, None)] == [200, 200]
    # ... so there is one client per name: b.test's certificate check fails.
    outcomes = db.run(push, service.Clients(verify=tls_partner.trust))
    assert outcomes == [service.Outcome(200, None), service.Outcome(None, "push.no_response")]
    a_host, b_host = (f"{h}.test:{tls_partner.port}" for h in "ab")
    assert tls_partner.hosts == [a_host, b_host, a_host]  # the first b.test went to a.test's
    assert tls_partner.sni == ["a.test", "a.test", "b.test"]
