"""Delivery metrics for Prometheus, in the default registry that `/metrics` serves.

Two kinds, so that API replicas and Celery workers need no shared metrics state:

- **Latency histograms**, observed by the API process at the moment it records the transition,
  from the database's own timestamps (so it does not matter which process relayed a delivery):
  accepted -> available and available -> fetched at a delivery's first fetch, accepted ->
  acknowledged at its acknowledgement. Observations are made only after the commit.
- **Gauges and counters read from the database at scrape time** (`DeliveryCollector`, cached
  for a few seconds): the outbox queue depth per topic, rows being retried, dead letters, the
  age of the oldest pending row, push attempts by outcome, and deliveries overdue for
  acknowledgement per recipient. Every replica reports the same values: aggregate with `max`.

Besides, per request (`observe_request`, called by `middleware.RequestContext`): the HTTP
series `http_requests_total{method,status,handler}`, `http_request_duration_seconds` and
`http_request_duration_highr_seconds`, `http_request_size_bytes` and `http_response_size_bytes`
(the names and labels prometheus-fastapi-instrumentator used before). The handler is the
route's template, taken from the route the router already matched (`scope["route"]`): the
instrumentator matched every request against the route table a second time (3 % of a submit's
CPU). `/metrics` and `/health/*` are not counted.

Everything is registered once, at import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, Summary
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session
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


def observe_after_commit(session: Session, histogram: Histogram, value: float) -> None:
    """Observe `value` once this session's transaction has committed (never on rollback)."""
    session.info.setdefault(_KEY, []).append((histogram, max(value, 0.0)))


def _flush(session: Session) -> None:
    for histogram, value in session.info.pop(_KEY, []):
        histogram.observe(value)


class DeliveryCollector(Collector):
    """Queue depth, retries, dead letters and overdue acknowledgements, read from the database."""

    CACHE_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> Iterable[Metric]:
        # Without this the registry would call collect() (a query) when registering.
        return list(self._families(empty=True))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.CACHE_S:
                try:
                    families = list(self._families(empty=False))
                except Exception as exc:
                    _log.warning("delivery metrics unavailable", error=type(exc).__name__)
                    up = GaugeMetricFamily(
                        "broker_delivery_metrics_up", "1 if the database could be read."
                    )
                    up.add_metric([], 0)
                    return [up]
                self._cached = (now, families)
            return self._cached[1]

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        up = GaugeMetricFamily("broker_delivery_metrics_up", "1 if the database could be read.")
        pending = GaugeMetricFamily(
            "broker_outbox_pending", "Outbox rows not yet done (queue depth).", labels=["topic"]
        )
        retrying = GaugeMetricFamily(
            "broker_outbox_retrying",
            "Pending outbox rows that already failed or were cut short at least once.",
            labels=["topic"],
        )
        dead = GaugeMetricFamily(
            "broker_outbox_dead_letters",
            "Outbox rows given up after their last attempt (kept for an operator).",
            labels=["topic"],
        )
        oldest = GaugeMetricFamily(
            "broker_outbox_oldest_pending_seconds",
            "Age of the oldest pending outbox row.",
            labels=["topic"],
        )
        attempts = CounterMetricFamily(
            "broker_push_attempts", "Push POST attempts by outcome.", labels=["status"]
        )
        overdue = GaugeMetricFamily(
            "broker_deliveries_overdue",
            "Deliveries not acknowledged within their agreement's ack_deadline.",
            labels=["recipient"],
        )
        if not empty:
            self._read(pending, retrying, dead, oldest, attempts, overdue)
            up.add_metric([], 1)
        yield from (up, pending, retrying, dead, oldest, attempts, overdue)

    @staticmethod
    def _read(
        pending: GaugeMetricFamily,
        retrying: GaugeMetricFamily,
        dead: GaugeMetricFamily,
        oldest: GaugeMetricFamily,
        attempts: CounterMetricFamily,
        overdue: GaugeMetricFamily,
    ) -> None:
        from broker.ids import utcnow
        from broker.inbox import repository as inbox_repo
        from broker.inbox import service as inbox
        from broker.push import repository as push_repo

        session = db.new_session()
        try:
            now = utcnow()
            stats: dict[str, Any] = {row[0]: row for row in inbox_repo.outbox_stats(session)}
            for topic in sorted({"deliver", "push", *stats}):
                _, n_pending, n_retrying, n_dead, first = stats.get(topic, (topic, 0, 0, 0, None))
                pending.add_metric([topic], n_pending)
                retrying.add_metric([topic], n_retrying)
                dead.add_metric([topic], n_dead)
                age = (now - first).total_seconds() if first is not None else 0.0
                oldest.add_metric([topic], max(age, 0.0))
            for status, count in push_repo.attempt_counts(session).items():
                attempts.add_metric([status], count)
            for recipient, count in sorted(inbox.overdue(session, now).items()):
                overdue.add_metric([recipient], count)
        finally:
            session.rollback()
            session.close()

    def invalidate(self) -> None:
        """Forget the cached values (tests)."""
        with self._lock:
            self._cached = None


collector = DeliveryCollector()
REGISTRY.register(collector)
db.on_commit(_flush)
