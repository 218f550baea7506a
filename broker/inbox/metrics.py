"""The delivery gauges on `/metrics`, read from the database at scrape time.

Outbox queue depth per topic, rows being retried, dead letters, the age of the oldest pending
row, push attempts by outcome, and deliveries overdue for acknowledgement per recipient. They
are the database's, not a process's: every replica reports the same values (aggregate with
`max`). Read at most every `CACHE_S` seconds, in one short transaction; a failed read answers
`broker_delivery_metrics_up 0` instead of failing the scrape. The application registers the
collector once (`install`); the latency histograms stay in `broker.metrics`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.ids import utcnow
from broker.inbox import repository, service
from broker.logging import get_logger
from broker.messages.models import OUTBOX_DELIVER, OUTBOX_PUSH
from broker.recalls import service as recalls

_log = get_logger("broker.inbox.metrics")


@dataclass(frozen=True, slots=True)
class Readings:
    """What one scrape read from the database."""

    at: datetime
    outbox: Sequence[Any]  # (topic, pending, retrying, dead, oldest pending created_at)
    push_attempts: dict[str, int]
    overdue: dict[str, int]
    recall_answers_overdue: dict[str, int]


async def read(session: AsyncSession) -> Readings:
    """The gauges' values, as of now."""
    now = utcnow()
    return Readings(
        at=now,
        outbox=await repository.outbox_stats(session),
        push_attempts=await repository.push_attempt_counts(session),
        overdue=await service.overdue(session, now),
        recall_answers_overdue=await recalls.overdue_answers(session, now),
    )


def families(readings: Readings | None) -> Iterator[Metric]:
    """The metric families, filled from `readings` (empty, and `up` unset, without them)."""
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
    unanswered = GaugeMetricFamily(
        "broker_recall_answers_overdue",
        "Recall notices not answered (erased, or retained) by the recall's deadline.",
        labels=["recipient"],
    )
    if readings is not None:
        stats = {row[0]: row for row in readings.outbox}
        for topic in sorted({OUTBOX_DELIVER, OUTBOX_PUSH, *stats}):
            _, n_pending, n_retrying, n_dead, first = stats.get(topic, (topic, 0, 0, 0, None))
            pending.add_metric([topic], n_pending)
            retrying.add_metric([topic], n_retrying)
            dead.add_metric([topic], n_dead)
            age = (readings.at - first).total_seconds() if first is not None else 0.0
            oldest.add_metric([topic], max(age, 0.0))
        for status, count in readings.push_attempts.items():
            attempts.add_metric([status], count)
        for recipient, count in sorted(readings.overdue.items()):
            overdue.add_metric([recipient], count)
        for recipient, count in sorted(readings.recall_answers_overdue.items()):
            unanswered.add_metric([recipient], count)
        up.add_metric([], 1)
    yield from (up, pending, retrying, dead, oldest, attempts, overdue, unanswered)


class DeliveryCollector(Collector):
    """The delivery gauges, cached for `CACHE_S` seconds between database reads.

    `collect` is sync (prometheus_client's API) and reads through `db.call`: call it from a
    thread, as the `def` route serving `/metrics` does, never on a running event loop.
    """

    CACHE_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> Iterable[Metric]:
        # Without this the registry would call collect() (a query) when registering.
        return list(families(None))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.CACHE_S:
                try:
                    found = list(families(db.call(read)))
                except Exception as exc:
                    _log.warning("delivery metrics unavailable", error=type(exc).__name__)
                    up = GaugeMetricFamily(
                        "broker_delivery_metrics_up", "1 if the database could be read."
                    )
                    up.add_metric([], 0)
                    return [up]
                self._cached = (now, found)
            return self._cached[1]

    def invalidate(self) -> None:
        """Forget the cached values (tests)."""
        with self._lock:
            self._cached = None


collector = DeliveryCollector()
_installed: set[int] = set()
_install_lock = threading.Lock()


def install(registry: CollectorRegistry = REGISTRY) -> None:
    """Serve the delivery gauges from `registry` (idempotent: apps are created many times)."""
    with _install_lock:
        if id(registry) not in _installed:
            registry.register(collector)
            _installed.add(id(registry))
