"""Delivery metrics for Prometheus, in the default registry that `/metrics` serves.

Two kinds, so that API replicas and Celery workers need no shared metrics state:

- **Latency histograms**, observed by the API process at the moment it records the transition,
  from the database's own timestamps (so it does not matter which process relayed a delivery):
  accepted -> available and available -> fetched at a delivery's first fetch, accepted ->
  acknowledged at its acknowledgement. Observations are made only after the commit.
- **Gauges and counters read from the database at scrape time**: the inbox's own collector
  (`broker.inbox.metrics`), registered by the application.

Besides, per request (`observe_request`, called by `middleware.RequestContext`): the HTTP
series `http_requests_total{method,status,handler}`, `http_request_duration_seconds` and
`http_request_duration_highr_seconds`, `http_request_size_bytes` and `http_response_size_bytes`
(the names and labels prometheus-fastapi-instrumentator used before). The handler is the
route's template, taken from the route the router already matched (`scope["route"]`), so
that no request is matched twice. `/metrics` and `/health/*` are not counted.

Everything is registered once, at import.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram, Summary
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Mount
from starlette.types import Scope

from broker import db
from broker.logging import get_logger

_log = get_logger("broker.metrics")

# From a local long-poll wake-up (milliseconds) to a partner that acknowledges days later.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0,
)  # fmt: skip

ACCEPTED_TO_AVAILABLE = Histogram(
    "broker_delivery_accepted_to_available_seconds",
    "From the broker accepting a message to its delivery being available in the inbox.",
    buckets=LATENCY_BUCKETS,
)
AVAILABLE_TO_FETCHED = Histogram(
    "broker_delivery_available_to_fetched_seconds",
    "From a delivery being available to the recipient's first fetch of it.",
    buckets=LATENCY_BUCKETS,
)
ACCEPTED_TO_ACKNOWLEDGED = Histogram(
    "broker_delivery_accepted_to_acknowledged_seconds",
    "From the broker accepting a message to the recipient's signed acknowledgement.",
    buckets=LATENCY_BUCKETS,
)

_KEY = "broker.metrics"

HTTP_REQUESTS = Counter(
    "http_requests",
    "Total number of requests by method, status and handler.",
    ["method", "status", "handler"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Latency with only few buckets by handler. Made to be only used if aggregation by handler"
    " is important.",
    ["method", "handler"],
    buckets=(0.1, 0.5, 1.0),
)
HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5,
    5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip
HTTP_DURATION_HIGHR = Histogram(
    "http_request_duration_highr_seconds",
    "Latency with many buckets but no API specific labels. Made for more accurate percentile"
    " calculations.",
    buckets=HIGHR_BUCKETS,
)
HTTP_REQUEST_SIZE = Summary(
    "http_request_size_bytes", "Content length of incoming requests by handler.", ["handler"]
)
HTTP_RESPONSE_SIZE = Summary(
    "http_response_size_bytes", "Content length of outgoing responses by handler.", ["handler"]
)


def route_template(scope: Scope, root_path: str) -> str | None:
    """The template of the route that served `scope` (`/v1/messages/{mid}`), None if none did.

    `root_path` is the application's own, as the request arrived: what a mount added to it
    since is the mount's path (`/console/login`; static files count as `/static`).
    """
    mounted: str = scope.get("root_path", "")[len(root_path) :]
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    if path is None or isinstance(route, Mount):
        # A mounted app without routes of its own (static files) leaves only its mount path.
        return mounted or None
    return mounted + path


def observe_request(
    scope: Scope, root_path: str, status: int, seconds: float, sizes: tuple[int, int]
) -> None:
    """Count one answered request; `sizes` are the request's and the response's body bytes."""
    handler = route_template(scope, root_path) or "none"
    if handler == "/metrics" or handler.startswith("/health/"):
        return
    method = scope["method"]
    HTTP_REQUESTS.labels(method, f"{str(status)[0]}xx", handler).inc()
    HTTP_DURATION.labels(method, handler).observe(seconds)
    HTTP_DURATION_HIGHR.observe(seconds)
    HTTP_REQUEST_SIZE.labels(handler).observe(sizes[0])
    HTTP_RESPONSE_SIZE.labels(handler).observe(sizes[1])


def observe_after_commit(session: AsyncSession, histogram: Histogram, value: float) -> None:
    """Observe `value` once this session's transaction has committed (never on rollback)."""
    db.after_commit(session, object(), functools.partial(histogram.observe, max(value, 0.0)))
