"""Rate limits per principal, a limit on failed authentication per client, long-poll caps.

Every gated route goes through `deps.RoleGate`, which calls this module twice:

1. `guard_authentication` around token checking. A client address (the socket peer, so put
   the broker behind a proxy that sets it, e.g. uvicorn `--forwarded-allow-ips`) that has
   failed authentication `rate_auth_failures_per_minute` times in the last minute is refused
   with 429 *before* its token is looked at: a token guesser cannot tell a right guess from a
   wrong one once it is blocked, and each further guess costs no database lookup. On the
   async submit path an address read as clean is not read again for `CLEAN_S` unless it
   fails meanwhile (one Redis round trip less per submit).
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

import ipaddress
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

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
    """A moving-window limiter over one `limits` storage."""

    # After the store fails, skip it for this long instead of paying a connect timeout on
    # every request while Redis is down.
    RETRY_STORE_S = 5.0

    def __init__(self, uri: str) -> None:
        self.uri = uri
        options: dict[str, Any] = {}
        if uri.startswith(("redis://", "rediss://")):
            options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        self.storage = storage_from_string(uri, wrap_exceptions=True, **options)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self._down_until = 0.0

    @staticmethod
    def item(per_minute: int) -> RateLimitItem:
        return RateLimitItemPerMinute(max(per_minute, 1), 1, namespace="broker")

    def _store_down(self, bucket: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + self.RETRY_STORE_S
        _log.warning("rate limit store unavailable", bucket=bucket, error=type(exc).__name__)

    def hit(self, bucket: str, per_minute: int, key: str) -> bool:
        """Take one unit; False when the budget is spent (fails open if the store is down)."""
        if time.monotonic() < self._down_until:
            return True
        try:
            return self.strategy.hit(self.item(per_minute), bucket, key)
        except Exception as exc:
            self._store_down(bucket, exc)
            return True

    def exhausted(self, bucket: str, per_minute: int, key: str) -> bool:
        """Whether the budget is spent, without taking a unit."""
        if time.monotonic() < self._down_until:
            return False
        try:
            return not self.strategy.test(self.item(per_minute), bucket, key)
        except Exception as exc:
            self._store_down(bucket, exc)
            return False

    def retry_after(self, bucket: str, per_minute: int, key: str) -> int:
        """Whole seconds until the oldest counted request leaves the window (at least 1)."""
        try:
            stats = self.strategy.get_window_stats(self.item(per_minute), bucket, key)
        except Exception:
            return _WINDOW_S
        return min(_WINDOW_S, max(1, math.ceil(stats.reset_time - time.time())))

    def reset(self) -> None:
        try:
            self.storage.reset()
        except Exception as exc:
            _log.warning("rate limit store not reset", error=type(exc).__name__)


_lock = threading.Lock()
_limiters: dict[str, Limiter] = {}


def limiter() -> Limiter:
    """The limiter for the current settings (one per storage URI)."""
    uri = storage_uri(settings())
    with _lock:
        if uri not in _limiters:
            _limiters[uri] = Limiter(uri)
        return _limiters[uri]


def on_startup() -> None:
    """Start in-memory counts afresh with the application (shared Redis counts are kept)."""
    with _lock:
        for uri in [u for u in _limiters if u.startswith("memory://")]:
            del _limiters[uri]


def reset() -> None:
    """Forget all counts (tests and operators; clears the Redis keys of `limits` too)."""
    _clean_until.clear()
    limiter().reset()
    on_startup()


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


@contextmanager
def guard_authentication(request: Request) -> Iterator[None]:
    """Refuse clients that keep failing authentication; count each failure (401)."""
    cfg = settings()
    if not cfg.rate_limit_enabled:
        yield
        return
    limit, address = cfg.rate_auth_failures_per_minute, client_address(request)
    store = limiter()
    if store.exhausted(AUTH_FAILURES, limit, address):
        retry = store.retry_after(AUTH_FAILURES, limit, address)
        raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications")
    try:
        yield
    except BrokerError as exc:
        if exc.status_code == 401:
            _forget_clean(address)
        if exc.status_code == 401 and not store.hit(AUTH_FAILURES, limit, address):
            retry = store.retry_after(AUTH_FAILURES, limit, address)
            _log.warning("authentication failures rate-limited", client=address)
            raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications") from exc
        raise


def check(request: Request, caller: Caller) -> None:
    """Spend one unit of the caller's budget for this route's bucket, or refuse with 429."""
    cfg = settings()
    if not cfg.rate_limit_enabled:
        return
    route = request.scope.get("route")
    bucket = _ROUTE_BUCKETS.get((request.method, getattr(route, "path", "")), DEFAULT)
    limit = cfg.rate_submit_per_minute if bucket == SUBMIT else cfg.rate_default_per_minute
    key = str(caller.principal_id)
    store = limiter()
    if not store.hit(bucket, limit, key):
        retry = store.retry_after(bucket, limit, key)
        raise _refusal(bucket, limit, retry, f"more than {limit} requests a minute ({bucket})")


# --- the async submit path -------------------------------------------------------------------
#
# The same budgets, counted in the same place: `limits`' async Redis storage uses the same
# keys and scripts as its sync one, and an in-memory store is called directly (no I/O).
# Redis clients are bound to an event loop, so there is one async limiter per loop.

_async_limiters: dict[int, tuple[Any, Limiter, Any, Any]] = {}


def _async_store() -> tuple[Limiter, Any, Any] | None:
    """(sync limiter for its down-state, async storage, async strategy), None for memory."""
    import asyncio

    store = limiter()
    if not store.uri.startswith(("redis://", "rediss://")):
        return None
    loop = asyncio.get_running_loop()
    entry = _async_limiters.get(id(loop))
    if entry is None or entry[0] is not loop or entry[1] is not store:
        from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow

        storage = storage_from_string(
            "async+" + store.uri,
            implementation="redispy",
            wrap_exceptions=True,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
        )
        entry = (loop, store, storage, AsyncMovingWindow(storage))
        _async_limiters[id(loop)] = entry
    return entry[1], entry[2], entry[3]


async def _hit_async(bucket: str, per_minute: int, key: str) -> tuple[bool, int]:
    """(allowed, retry_after) for one unit of `bucket`; fails open like `Limiter.hit`."""
    found = _async_store()
    if found is None:
        store = limiter()
        if store.hit(bucket, per_minute, key):
            return True, 0
        return False, store.retry_after(bucket, per_minute, key)
    store, _, strategy = found
    if time.monotonic() < store._down_until:
        return True, 0
    item = store.item(per_minute)
    try:
        if await strategy.hit(item, bucket, key):
            return True, 0
        stats = await strategy.get_window_stats(item, bucket, key)
    except Exception as exc:
        store._store_down(bucket, exc)
        return True, 0
    return False, min(_WINDOW_S, max(1, math.ceil(stats.reset_time - time.time())))


# Addresses whose failure count was read as clean, until when (monotonic). A client that
# authenticates correctly costs no Redis round trip for its failure check while it is clean;
# any failure this process sees for it forgets the entry, so its next request reads the shared
# count again. Another process's failures reach this one within CLEAN_S at most.
CLEAN_S = 1.0
_CLEAN_MAX = 10_000
_clean_until: dict[str, float] = {}


def _forget_clean(address: str) -> None:
    _clean_until.pop(address, None)


async def auth_allowed_async(address: str) -> None:
    """`guard_authentication`'s first half: 429 if `address` keeps failing authentication."""
    cfg = settings()
    if not cfg.rate_limit_enabled:
        return
    now = time.monotonic()
    if _clean_until.get(address, 0.0) > now:
        return
    limit = cfg.rate_auth_failures_per_minute
    found = _async_store()
    if found is None:
        store = limiter()
        if store.exhausted(AUTH_FAILURES, limit, address):
            retry = store.retry_after(AUTH_FAILURES, limit, address)
            raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications")
        return
    store, _, strategy = found
    if time.monotonic() < store._down_until:
        return
    item = store.item(limit)
    try:
        if await strategy.test(item, AUTH_FAILURES, address):
            if len(_clean_until) >= _CLEAN_MAX:
                _clean_until.clear()
            _clean_until[address] = now + CLEAN_S
            return
        stats = await strategy.get_window_stats(item, AUTH_FAILURES, address)
    except Exception as exc:
        store._store_down(AUTH_FAILURES, exc)
        return
    retry = min(_WINDOW_S, max(1, math.ceil(stats.reset_time - time.time())))
    raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications")


async def auth_failed_async(address: str, exc: BrokerError) -> None:
    """`guard_authentication`'s second half: count a 401; 429 once the budget is spent."""
    cfg = settings()
    if not cfg.rate_limit_enabled or exc.status_code != 401:
        return
    _forget_clean(address)
    limit = cfg.rate_auth_failures_per_minute
    allowed, retry = await _hit_async(AUTH_FAILURES, limit, address)
    if not allowed:
        _log.warning("authentication failures rate-limited", client=address)
        raise _refusal(AUTH_FAILURES, limit, retry, "too many failed authentications") from exc


async def check_async(request: Request, caller: Caller) -> None:
    """`check` on the async submit path."""
    cfg = settings()
    if not cfg.rate_limit_enabled:
        return
    route = request.scope.get("route")
    bucket = _ROUTE_BUCKETS.get((request.method, getattr(route, "path", "")), DEFAULT)
    limit = cfg.rate_submit_per_minute if bucket == SUBMIT else cfg.rate_default_per_minute
    allowed, retry = await _hit_async(bucket, limit, str(caller.principal_id))
    if not allowed:
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
