"""Rate limits per principal, a limit on failed authentication per client, long-poll caps.

Every gated route goes through `deps.admit`, which calls this module around authentication:

1. `auth_allowed` before the token is looked at, `auth_failed` after a refused one,
   `auth_succeeded` after an accepted one. A client address (the socket peer, or the address a
   proxy listed in `BROKER_TRUSTED_PROXIES` forwards; no proxy is trusted by default) that has
   failed authentication `rate_auth_failures_per_minute` times in the last minute is refused
   with 429 *before* its token is looked at: a token guesser cannot tell a right guess from a
   wrong one once it is blocked, and each further guess costs no database lookup. Tokens that
   authenticated in the last hour still pass a blocked address, so clients sharing an address
   cannot lock each other out. An address read as clean is not read again for `CLEAN_S`
   unless it fails meanwhile.
2. `check` after authentication: one moving-window budget per principal and bucket, `submit`
   for `POST /v1/messages` and `default` for every other route.

Counts live in memory in the embedded profile (one process) and in Redis in production, so
that all API processes share them (`rate_limit_storage` overrides either). If the store is
unreachable the request is let through and a warning is logged, and the store is skipped for a
few seconds: shedding every request because Redis blinked would turn a limiter into an outage.

Long-polls (`GET /v1/inbox?wait=...`) that found nothing and wait hold no thread nor
connection, but each is an open request and a waiter, so they are capped by concurrency
rather than by rate: `longpoll_per_agency` waiting requests per agency and `longpoll_total`
per process.

Refusals are RFC 9457 problem+json with code `rate.limited`, `Retry-After` (seconds) and the
`RateLimit-Policy` / `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import ConnectionPool

from broker import db
from broker.auth.service import Caller
from broker.config import Profile, Settings, settings
from broker.errors import BrokerError, RateLimited
from broker.logging import get_logger

_log = get_logger("broker.ratelimit")

SUBMIT = "submit"
DEFAULT = "default"
AUTH_FAILURES = "auth_failures"
# Routes with their own budget: (method, route template) -> bucket.
_ROUTE_BUCKETS = {("POST", "/v1/messages"): SUBMIT}
_WINDOW_S = 60


def storage_uri(cfg: Settings) -> str:
    """Where counts are kept: the explicit setting, else memory (embedded) or Redis."""
    if cfg.rate_limit_storage:
        return cfg.rate_limit_storage
    return "memory://" if cfg.profile is Profile.embedded else cfg.redis_url


class Limiter:
    """A moving-window limiter over one `limits` async storage (memory or Redis)."""

    # After the store fails, skip it for this long instead of paying a connect timeout on
    # every request while Redis is down.
    RETRY_STORE_S = 5.0

    def __init__(self, uri: str) -> None:
        self.uri = uri
        options: dict[str, Any] = {}
        self._pool: ConnectionPool | None = None
        if uri.startswith(("redis://", "rediss://")):
            # Our own pool, so that `close` can close its connections with their event loop.
            self._pool = ConnectionPool.from_url(
                uri, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            options = {"implementation": "redispy", "connection_pool": self._pool}
        storage = storage_from_string("async+" + uri, wrap_exceptions=True, **options)
        self.storage = cast(AsyncStorage, storage)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self._down_until = 0.0

    @staticmethod
    def item(per_minute: int) -> RateLimitItem:
        return RateLimitItemPerMinute(max(per_minute, 1), 1, namespace="broker")

    def _store_down(self, bucket: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + self.RETRY_STORE_S
        _log.warning("rate limit store unavailable", bucket=bucket, error=type(exc).__name__)

    async def hit(self, bucket: str, per_minute: int, key: str) -> int:
        """Take one unit: 0 if allowed (also when the store is down), else the Retry-After."""
        return await self._ask(bucket, per_minute, key, take=True)

    async def exhausted(self, bucket: str, per_minute: int, key: str) -> int:
        """0 if the budget is not spent (or the store is down), else the Retry-After."""
        return await self._ask(bucket, per_minute, key, take=False)

    async def _ask(self, bucket: str, per_minute: int, key: str, *, take: bool) -> int:
        if time.monotonic() < self._down_until:
            return 0
        item = self.item(per_minute)
        try:
            ask = self.strategy.hit if take else self.strategy.test
            if await ask(item, bucket, key):
                return 0
            stats = await self.strategy.get_window_stats(item, bucket, key)
        except Exception as exc:
            self._store_down(bucket, exc)
            return 0
        return _retry_after(stats.reset_time)

    async def mark(self, bucket: str, seconds: int, key: str) -> None:
        """Remember `key` for `seconds` (a window of one hit)."""
        if time.monotonic() < self._down_until:
            return
        try:
            await self.strategy.hit(
                RateLimitItemPerSecond(1, seconds, namespace="broker"), bucket, key
            )
        except Exception as exc:
            self._store_down(bucket, exc)

    async def marked(self, bucket: str, seconds: int, key: str) -> bool:
        """Whether `key` was marked in the last `seconds` (False when the store is down)."""
        if time.monotonic() < self._down_until:
            return False
        try:
            item = RateLimitItemPerSecond(1, seconds, namespace="broker")
            return not await self.strategy.test(item, bucket, key)
        except Exception as exc:
            self._store_down(bucket, exc)
            return False

    async def reset(self) -> None:
        try:
            await self.storage.reset()
        except Exception as exc:
            _log.warning("rate limit store not reset", error=type(exc).__name__)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _retry_after(reset_time: float) -> int:
    """Whole seconds until the oldest counted request leaves the window (1 to 60)."""
    return min(_WINDOW_S, max(1, math.ceil(reset_time - time.time())))


# The async storages' clients and timers belong to the event loop that made them: one limiter
# per storage URI and loop. In-memory counts therefore live with their loop (the embedded
# profile serves from one loop).
_lock = threading.Lock()
_limiters: dict[tuple[str, asyncio.AbstractEventLoop], Limiter] = {}


def limiter() -> Limiter:
    """The running loop's limiter for the current settings."""
    key = (storage_uri(settings()), asyncio.get_running_loop())
    with _lock:
        for stale in [k for k in _limiters if k[1].is_closed()]:
            del _limiters[stale]
        if key not in _limiters:
            _limiters[key] = Limiter(key[0])
        return _limiters[key]


async def close() -> None:
    """Close the running loop's limiters (their loop is ending: application shutdown)."""
    loop = asyncio.get_running_loop()
    with _lock:
        mine = [k for k in _limiters if k[1] is loop]
        closing = [_limiters.pop(k) for k in mine]
    for found in closing:
        await found.close()


db.on_dispose(close)


def on_startup() -> None:
    """Start in-memory counts afresh with the application (shared Redis counts are kept)."""
    with _lock:
        for key in [k for k in _limiters if k[0].startswith("memory://")]:
            del _limiters[key]


def reset() -> None:
    """Forget all counts (tests and operators; clears the Redis keys of `limits` too)."""
    _clean_until.clear()
    _known_until.clear()
    on_startup()

    async def clear() -> None:
        await limiter().reset()

    db.run(clear)


def _refusal(bucket: str, per_minute: int, retry_after: int, detail: str) -> BrokerError:
    return RateLimited(
        detail,
        headers={
            "Retry-After": str(retry_after),
            "RateLimit-Policy": f'"{bucket}";q={per_minute};w={_WINDOW_S}',
            "RateLimit": f'"{bucket}";r=0;t={retry_after}',
        },
    )


def client_address(request: Request) -> str:
    """The socket peer's address (a trusted proxy's forwarded address under uvicorn).

    IPv6 clients are counted per /64: one host usually holds a whole /64, and could otherwise
    rotate through its addresses to get a fresh budget for every guess.
    """
    host = request.client.host if request.client is not None else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


# Addresses whose failure count was read as clean, until when (monotonic). A client that
# authenticates correctly costs no store round trip for its failure check while it is clean;
# any failure this process sees for it forgets the entry, so its next request reads the shared
# count again. Another process's failures reach this one within CLEAN_S at most.
CLEAN_S = 1.0
_CLEAN_MAX = 10_000
_clean_until: dict[str, float] = {}


async def auth_allowed(address: str, token_key: str | None = None) -> None:
    """Before the token is looked at: 429 if `address` keeps failing authentication, unless
    the token is one that authenticated recently (`token_key`, see `auth_succeeded`).

    So a client whose address is shared (a gateway, a NAT, a proxy not configured as trusted)
    cannot lock the others out with bad tokens: a token in use keeps working, a guesser's
    tokens do not (issue 15.8).
    """
    cfg = settings()
    if not cfg.rate_limit_enabled:
        return
    now = time.monotonic()
    if _clean_until.get(address, 0.0) > now:
        return
    limit = cfg.rate_auth_failures_per_minute
    retry = await limiter().exhausted(AUTH_FAILURES, limit, address)
    if retry:
        if token_key is not None and await _known(token_key, now):
            return
        raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications")
    if len(_clean_until) >= _CLEAN_MAX:
        _clean_until.clear()
    _clean_until[address] = now + CLEAN_S


async def auth_failed(address: str, exc: BrokerError) -> None:
    """After a refused token: count a 401; 429 once the budget is spent."""
    cfg = settings()
    if not cfg.rate_limit_enabled or exc.status_code != 401:
        return
    _clean_until.pop(address, None)
    limit = cfg.rate_auth_failures_per_minute
    retry = await limiter().hit(AUTH_FAILURES, limit, address)
    if retry:
        _log.warning("authentication failures rate-limited", client=address)
        raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications") from exc


# Tokens that authenticated, by `token_key`: in the shared store for KNOWN_S (what lets them
# past a blocked address in any process), and here until when (monotonic), so that a token in
# use costs a store round trip once per KNOWN_LOCAL_S and process, not per request.
KNOWN = "auth_known"
KNOWN_S = 3600
KNOWN_LOCAL_S = 600.0
_known_until: dict[str, float] = {}


def token_key(token: str | None) -> str | None:
    """What identifies a token to the failure limit: a hash of its first 20 characters (no
    part of a token is ever kept), None for anything that cannot be a token."""
    if not token or len(token) < 20:
        return None
    return hashlib.sha256(token[:20].encode("utf-8", "replace")).hexdigest()[:32]


async def auth_succeeded(token_key: str | None) -> None:
    """After a token authenticated: remember it, so that a blocked address does not stop it."""
    if token_key is None or not settings().rate_limit_enabled:
        return
    now = time.monotonic()
    if _known_until.get(token_key, 0.0) > now:
        return
    await limiter().mark(KNOWN, KNOWN_S, token_key)
    if len(_known_until) >= _CLEAN_MAX:
        _known_until.clear()
    _known_until[token_key] = now + KNOWN_LOCAL_S


async def _known(token_key: str, now: float) -> bool:
    if _known_until.get(token_key, 0.0) > now:
        return True
    return await limiter().marked(KNOWN, KNOWN_S, token_key)


async def check(request: Request, caller: Caller) -> None:
    """Spend one unit of the caller's budget for this route's bucket, or refuse with 429."""
    cfg = settings()
    if not cfg.rate_limit_enabled:
        return
    route = request.scope.get("route")
    bucket = _ROUTE_BUCKETS.get((request.method, getattr(route, "path", "")), DEFAULT)
    limit = cfg.rate_submit_per_minute if bucket == SUBMIT else cfg.rate_default_per_minute
    retry = await limiter().hit(bucket, limit, str(caller.principal_id))
    if retry:
        raise _refusal(bucket, limit, retry, f"more than {limit} requests a minute ({bucket})")


class _WaitSlots:
    """Per-process counts of long-polls that are waiting, per agency and in total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_agency: dict[str, int] = {}
        self._total = 0

    def acquire(self, agency: str, per_agency: int, total: int) -> bool:
        with self._lock:
            held = self._per_agency.get(agency, 0)
            if held >= per_agency or self._total >= total:
                return False
            self._per_agency[agency] = held + 1
            self._total += 1
            return True

    def release(self, agency: str) -> None:
        with self._lock:
            held = self._per_agency.get(agency, 0) - 1
            if held > 0:
                self._per_agency[agency] = held
            else:
                self._per_agency.pop(agency, None)
            self._total = max(0, self._total - 1)

    def held(self, agency: str | None = None) -> int:
        with self._lock:
            return self._total if agency is None else self._per_agency.get(agency, 0)


wait_slots = _WaitSlots()


def _wants_to_wait(request: Request) -> bool:
    try:
        return float(request.query_params.get("wait") or 0) > 0
    except ValueError:
        return False  # the route's own validation answers 422


@contextmanager
def long_poll_slot(request: Request, caller: Caller) -> Iterator[None]:
    """Hold one of the agency's long-poll slots while a `wait` request runs, or refuse (429)."""
    cfg = settings()
    agency = caller.agency_id or caller.name
    if not _wants_to_wait(request):
        yield
        return
    if not wait_slots.acquire(agency, cfg.longpoll_per_agency, cfg.longpoll_total):
        # A concurrency cap, not a rate: no RateLimit fields, only when to try again.
        raise RateLimited(
            f"at most {cfg.longpoll_per_agency} waiting polls per agency "
            f"({cfg.longpoll_total} per process); poll without wait, or retry",
            headers={"Retry-After": "1"},
        )
    try:
        yield
    finally:
        wait_slots.release(agency)
