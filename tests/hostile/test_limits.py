"""Resource limits: body size, read deadline, rate limits, token brute force, poll storms.

Limits are set low per test through the live settings object (monkeypatch), and the in-memory
rate-limit counts start afresh with every application start (each TestClient or server here).
Slow-client and bounded-memory checks talk raw HTTP/1.1 to a real uvicorn on a free port.
"""

from __future__ import annotations

import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest

from broker import db, ratelimit
from broker.config import settings
from tests.conftest import bearer, free_port
from tests.messages.conftest import Exchange

pytestmark = pytest.mark.hostile


def limit(monkeypatch: pytest.MonkeyPatch, **values: Any) -> None:
    for name, value in values.items():
        monkeypatch.setattr(settings(), name, value)


@contextmanager
def serve() -> Iterator[str]:
    """A real uvicorn on a free port, built from the settings as they are now."""
    from broker.demo import ServerThread

    server = ServerThread(free_port())
    server.start()
    server.wait_started()
    try:
        yield f"http://127.0.0.1:{server.server.config.port}"
    finally:
        server.stop()


def raw_request(url: str, head: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n")
    return sock


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head + b"\r\n\r\n" + body


# --- body size and read deadline -----------------------------------------------------------


def test_oversized_bodies_are_413_declared_or_chunked(
    client: Any, admin_headers: dict[str, str]
) -> None:
    headers = {**admin_headers, "content-type": "application/json"}
    declared = client.post("/v1/messages", content=b"[" * (2 << 20), headers=headers)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        for _ in range(40):
            yield b" " * 65536

    chunked = client.post("/v1/admin/agencies", content=chunks(), headers=headers)
    for response in (declared, chunked):
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "request.too_large"
        assert response.headers["content-type"] == "application/problem+json"


def test_a_million_recipients_never_reach_the_parser(
    client: Any, world: dict[str, Any], token_for: Any
) -> None:
    fp = bearer(token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01"))
    recipients = [f"XX-A{i:06d}" for i in range(1_000_000)]
    response = client.post(
        "/v1/messages:check", json={"routing": {"recipients": recipients}}, headers=fp
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request.too_large"


def test_page_size_and_wait_are_bounded(client: Any, world: dict[str, Any], token_for: Any) -> None:
    hk = bearer(token_for("agency", agency_id="HK-CED"))
    for query in ("limit=1000000", "limit=0", "wait=3600", "wait=-1", "after=" + "9" * 40):
        response = client.get(f"/v1/inbox?{query}", headers=hk)
        assert response.status_code in (400, 422), (query, response.text)
        assert response.json()["code"] in ("request.invalid", "inbox.bad_cursor"), query


def test_bounded_memory_the_413_arrives_before_the_body_is_sent(
    world: dict[str, Any], token_for: Any
) -> None:
    token = token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01")
    with serve() as url:
        # Declared length over the limit: refused on the headers, after 64 KiB of 2 MiB.
        sock = raw_request(
            url,
            "POST /v1/messages HTTP/1.1\nHost: broker\nContent-Type: application/json\n"
            f"Authorization: Bearer {token}\nContent-Length: {2 << 20}\n",
        )
        sock.sendall(b"[" * 65536)
        status, response = read_response(sock)
        sock.close()
        assert status == 413, response
        assert b"request.too_large" in response
        # Chunked: refused once the count passes 1 MiB, well before 2 MiB are sent.
        sock = raw_request(
            url,
            "POST /v1/messages HTTP/1.1\nHost: broker\nContent-Type: application/json\n"
            f"Authorization: Bearer {token}\nTransfer-Encoding: chunked\n",
        )
        sent, status, response = 0, 0, b""
        chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
        try:
            while sent < (2 << 20):
                sock.sendall(chunk)
                sent += 65536
                time.sleep(0.005)
                if select.select([sock], [], [], 0)[0]:
                    status, response = read_response(sock)
                    break
            if not status:
                status, response = read_response(sock)
        except (BrokenPipeError, ConnectionResetError):
            status, response = read_response(sock)
        finally:
            sock.close()
        assert status == 413, response
        assert sent < (2 << 20), f"the whole 2 MiB went out ({sent} bytes) before the 413"


def test_slow_clients_are_cut_and_block_nobody(
    world: dict[str, Any], token_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit(monkeypatch, request_read_timeout_s=2.0)
    token = token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01")
    agency = bearer(token_for("agency", agency_id="HK-CED"))
    with serve() as url:
        slow = [
            raw_request(
                url,
                "POST /v1/messages HTTP/1.1\nHost: broker\nContent-Type: application/json\n"
                f"Authorization: Bearer {token}\nContent-Length: 4096\n",
            )
            for _ in range(20)
        ]
        stop = threading.Event()

        def trickle() -> None:  # one byte per slow connection every 100 ms
            while not stop.is_set():
                for sock in slow:
                    with suppress(OSError):
                        sock.send(b" ")
                time.sleep(0.1)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            time.sleep(0.3)
            with httpx.Client(base_url=url, timeout=5) as http:
                for _ in range(5):
                    started = time.monotonic()
                    assert http.get("/health/live").status_code == 200
                    assert http.get("/v1/me", headers=agency).status_code == 200
                    assert http.get("/v1/inbox", headers=agency).status_code == 200
                    elapsed = time.monotonic() - started
                    assert elapsed < 2.5, f"a slow upload held up other requests ({elapsed:.2f} s)"
            # Each trickled upload is cut at the read deadline with 408.
            statuses = [read_response(sock, timeout=10)[0] for sock in slow]
        finally:
            stop.set()
            trickler.join()
            for sock in slow:
                sock.close()
        assert statuses == [408] * len(slow), statuses


# --- rate limits -----------------------------------------------------------------------------


def test_token_brute_force_hits_429_quickly(
    app: Any, client: Any, world: dict[str, Any], token_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit(monkeypatch, rate_auth_failures_per_minute=5)
    good = token_for("agency", agency_id="HK-CED")
    guesses = [
        client.get("/v1/me", headers=bearer("brk_" + secrets.token_urlsafe(32))) for _ in range(8)
    ]
    assert [r.status_code for r in guesses] == [401] * 5 + [429] * 3
    refused = guesses[-1]
    assert refused.json()["code"] == "rate.limited"
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-policy"] == '"auth_failures";q=5;w=60'
    assert refused.headers["ratelimit"].startswith('"auth_failures";r=0;t=')
    # Blocked before the token is looked at: a right guess is indistinguishable from a wrong one.
    assert client.get("/v1/me", headers=bearer(good)).status_code == 429
    assert client.get("/v1/me").status_code == 429

    # Other clients are unaffected. Asked on the same application's event loop: in-memory
    # counts belong to their loop, so a second TestClient would not see these at all.
    async def from_elsewhere() -> int:
        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False, client=("203.0.113.7", 40000)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            return (await other.get("/v1/me", headers=bearer(good))).status_code

    assert client.portal.call(from_elsewhere) == 200


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_bad_tokens_from_a_shared_address_lock_no_one_else_out(
    app: Any,
    world: dict[str, Any],
    token_for: Any,
    redis_url: str,
    storage: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15.8: behind one gateway, 600 bad tokens locked every agency out for a minute.

    Tokens that authenticated in the last hour pass the blocked address (in any process: the
    mark is in the shared store); a guesser's tokens, and tokens not yet used, do not.
    """
    from fastapi.testclient import TestClient

    uri = redis_url if storage == "redis" else "memory://"
    limit(monkeypatch, rate_limit_storage=uri, rate_auth_failures_per_minute=5)
    ratelimit.reset()
    gateway = f"192.0.2.{secrets.randbelow(200) + 20}"
    hk, kr = token_for("agency", agency_id="HK-CED"), token_for("agency", agency_id="KR-KCS")
    with TestClient(app, client=(gateway, 40000), raise_server_exceptions=False) as shared:
        assert shared.get("/v1/me", headers=bearer(hk)).status_code == 200  # in use
        guesses = [
            shared.get("/v1/me", headers=bearer("brk_" + secrets.token_urlsafe(32))).status_code
            for _ in range(8)
        ]
        assert guesses == [401] * 5 + [429] * 3
        assert shared.get("/v1/me", headers=bearer(hk)).status_code == 200
        assert shared.get("/v1/me", headers=bearer(kr)).status_code == 429  # not yet seen
        ratelimit._known_until.clear()  # another process: only the shared store knows
        assert shared.get("/v1/me", headers=bearer(hk)).status_code == 200
        # A token's first 20 characters are what is remembered, hashed: a guess that shares
        # them still has to be right.
        forged = hk[:20] + secrets.token_urlsafe(32)
        assert shared.get("/v1/me", headers=bearer(forged)).status_code in (401, 429)
        assert shared.get("/v1/me", headers=bearer(hk)).status_code == 200


def test_no_proxy_is_trusted_unless_configured() -> None:
    """Issue 15.8: uvicorn alone believes X-Forwarded-For from 127.0.0.1."""
    from pydantic import ValidationError

    from broker.config import Settings

    assert Settings().uvicorn_proxy == {"proxy_headers": False}
    listed = Settings(trusted_proxies="10.0.0.2, 192.168.0.0/24")
    assert listed.uvicorn_proxy == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.2,192.168.0.0/24",
    }
    with pytest.raises(ValidationError, match="BROKER_TRUSTED_PROXIES"):
        Settings(trusted_proxies="10.0.0.300")


@pytest.mark.redis
def test_failed_authentication_is_counted_across_paths_at_once(
    app: Any, exchange: Exchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submit path remembers a clean address for a second (`CLEAN_S`); a failure from that
    address, on any route, makes its next submit read the shared count at once."""
    from fastapi.testclient import TestClient

    limit(monkeypatch, rate_limit_storage=redis_url, rate_auth_failures_per_minute=3)
    ratelimit.reset()
    monkeypatch.setattr(ratelimit, "CLEAN_S", 60.0)  # a stale entry would outlive the test

    async def unknown(token_key: str | None) -> None:  # no token passes as known here
        return None

    monkeypatch.setattr(ratelimit, "auth_succeeded", unknown)
    peer = f"198.51.100.{secrets.randbelow(200) + 20}"
    # The counts are in Redis: this client's application start keeps them.
    with TestClient(app, client=(peer, 40000), raise_server_exceptions=False) as from_peer:
        exchange.client = from_peer
        first, _, _ = exchange.send()
        assert first.status_code == 201, first.text  # the address is now remembered as clean
        guess = bearer("brk_" + secrets.token_urlsafe(32))
        guesses = [exchange.client.get("/v1/me", headers=guess).status_code for _ in range(3)]
        assert guesses == [401] * 3
        refused, _, _ = exchange.send()  # a right token, from a blocked address
        assert refused.status_code == 429, refused.text
        assert refused.headers["ratelimit-policy"] == '"auth_failures";q=3;w=60'
        # Wrong tokens on the submit route itself are counted too.
        ratelimit.reset()
        bad = {**guess, "Idempotency-Key": "x"}
        on_submit = [
            exchange.client.post("/v1/messages", json={"envelope": "x"}, headers=bad).status_code
            for _ in range(4)
        ]
        assert on_submit == [401] * 3 + [429]


def test_principal_budget_per_bucket(exchange: Exchange, monkeypatch: pytest.MonkeyPatch) -> None:
    limit(monkeypatch, rate_default_per_minute=5, rate_submit_per_minute=2)
    fp = "VN-GDC/fp-hcm-01"
    first, routing, _ = exchange.send()
    second, _, _ = exchange.send()
    third, _, _ = exchange.send()
    assert (first.status_code, second.status_code, third.status_code) == (201, 201, 429)
    assert third.json()["code"] == "rate.limited"
    assert third.headers["ratelimit-policy"] == '"submit";q=2;w=60'
    # The default bucket is separate: status reads still work, until they are spent too.
    reads = [
        exchange.client.get(f"/v1/messages/{routing['mid']}", headers=exchange.fp_headers(fp))
        for _ in range(6)
    ]
    assert [r.status_code for r in reads] == [200] * 5 + [429]
    # Another principal has its own budget.
    other = exchange.client.get("/v1/me", headers=exchange.agency_headers("HK-CED"))
    assert other.status_code == 200
    from broker.audit import repository

    # A throttled submit is not a refused envelope.
    assert db.call(repository.list_events, kind="msg.rejected") == []


def test_every_gated_route_is_rate_limited(
    app: Any, client: Any, world: dict[str, Any], token_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.hostile.conftest import gated_routes, url_for

    limit(monkeypatch, rate_default_per_minute=1, rate_submit_per_minute=1)
    checked = 0
    for method, path, _ in gated_routes(app):
        headers = bearer(token_for("auditor"))  # a fresh principal: one request allowed
        client.request(method, url_for(path), headers=headers, json={})
        again = client.request(method, url_for(path), headers=headers, json={})
        assert again.status_code == 429, f"{method} {path}: {again.status_code} {again.text[:200]}"
        assert again.json()["code"] == "rate.limited"
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("testclient", "testclient"),
    ],
)
def test_failure_budget_keys(peer: str, key: str) -> None:
    from starlette.requests import Request

    request = Request({"type": "http", "client": (peer, 1234), "headers": []})
    assert ratelimit.client_address(request) == key


async def _close(limiter: ratelimit.Limiter) -> None:
    """Close a Redis limiter's connections, which its `limits` storage keeps open."""
    await limiter.close()


def test_counts_live_in_redis_in_production(redis_url: str) -> None:
    async def scenario() -> None:
        limiter, other = ratelimit.Limiter(redis_url), ratelimit.Limiter(redis_url)
        try:
            await limiter.reset()
            key = secrets.token_hex(8)
            hits = [await limiter.hit("submit", 3, key) for _ in range(4)]
            assert hits[:3] == [0, 0, 0]  # allowed
            assert 1 <= hits[3] <= 60  # refused, with its Retry-After
            assert 1 <= await limiter.exhausted("submit", 3, key) <= 60
            # Another limiter on the same store (another process) sees the same count.
            assert await other.exhausted("submit", 3, key) > 0
            await limiter.reset()
            assert await limiter.exhausted("submit", 3, key) == 0
        finally:
            await _close(limiter)
            await _close(other)

    db.run(scenario)


def test_an_unreachable_store_fails_open_and_fast() -> None:
    async def scenario() -> float:
        limiter = ratelimit.Limiter("redis://127.0.0.1:1/0")
        assert await limiter.hit("default", 1, "k") == 0
        started = time.monotonic()
        for _ in range(100):  # the store is skipped for a while, not retried per request
            assert await limiter.hit("default", 1, "k") == 0
            assert await limiter.exhausted("default", 1, "k") == 0
        return time.monotonic() - started

    assert db.run(scenario) < 0.5


# --- long-poll storm -------------------------------------------------------------------------


def test_poll_storm_is_capped_per_agency_and_others_are_served(
    world: dict[str, Any], token_for: Any
) -> None:
    hk = [bearer(token_for("agency", agency_id="HK-CED")) for _ in range(3)]
    kr = bearer(token_for("agency", agency_id="KR-KCS"))
    cap = settings().longpoll_per_agency
    storm, wait = 10, 4.0
    with serve() as url, ThreadPoolExecutor(storm + 2) as pool:

        def poll(headers: dict[str, str], wait: float) -> tuple[int, float, httpx.Response]:
            response = httpx.get(
                f"{url}/v1/inbox", params={"wait": wait}, headers=headers, timeout=30
            )
            return response.status_code, time.monotonic(), response

        started = time.monotonic()
        futures = [pool.submit(poll, hk[i % len(hk)], wait) for i in range(storm)]
        time.sleep(0.5)
        # Meanwhile another agency polls, with and without waiting, and is served.
        quick = poll(kr, 0)
        waiting = pool.submit(poll, kr, 1)
        results = [f.result() for f in futures]
        kr_wait = waiting.result()
    statuses = sorted(code for code, _, _ in results)
    assert statuses == [200] * cap + [429] * (storm - cap), statuses
    waited = [end for code, end, _ in results if code == 200]
    assert min(waited) - started >= wait - 0.5  # these really waited
    # KR-KCS was served while HK-CED's polls were still waiting, and so were the refusals.
    assert quick[0] == 200
    assert quick[1] < min(waited)
    assert kr_wait[0] == 200
    for code, end, response in results:
        if code == 429:
            assert end < min(waited)  # refused at once, not after a wait
            assert response.json()["code"] == "rate.limited"
            assert response.headers["retry-after"] == "1"
    assert ratelimit.wait_slots.held() == 0  # every slot was given back


@pytest.mark.parametrize(
    "path", ["/v1/messages", "/v1/inbox/01a209e8-cf03-74d1-ac62-45eda8e12c84/ack"]
)
def test_large_bodies_are_not_read_before_authentication(
    app: Any, client: Any, path: str, token_for: Any
) -> None:
    """Issue 15.8: submit and acknowledgement bodies must wait for the token check.

    The application is called directly, with a `receive` that counts what it hands over: a
    request without a valid token is answered 401 having read none of its body.
    """
    body = b'{"envelope": "' + b"A" * 500_000 + b'"}'
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        handed = 0
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal handed
            if handed < len(chunks):
                handed += 1
                return {
                    "type": "http.request",
                    "body": chunks[handed - 1],
                    "more_body": handed < len(chunks),
                }
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), *headers],
            "client": ("192.0.2.99", 40000),
            "server": ("testserver", 80),
            "state": {},
        }
        await app(scope, receive, send)
        return status, handed

    bad = [(b"authorization", b"Bearer brk_" + b"x" * 40)]
    assert client.portal.call(call, bad) == (401, 0)
    assert client.portal.call(call, []) == (401, 0)
    # With a valid token of the wrong role: 403, still unread.
    other = token_for("auditor")
    assert client.portal.call(call, [(b"authorization", f"Bearer {other}".encode())]) == (403, 0)
