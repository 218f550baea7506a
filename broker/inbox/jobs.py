"""Periodic and woken jobs of the inbox domain (ticker in embedded, Celery in production)."""

from __future__ import annotations

from broker import db, jobs, ticker
from broker.inbox import service


def relay() -> int:
    """Drain the outbox: make every queued delivery available (sync callers: task, ticker)."""
    return db.run(service.relay_all, db.session_scope)


def expire() -> int:
    """Withdraw every unfetched copy whose message's `exp` has passed (task, ticker)."""
    return db.run(service.expire_all, db.session_scope)


# How often the expiry job looks: polls stop serving a message at its `exp` by themselves; the
# job makes the withdrawal visible (status `expired`, the `msg.expired` leaf) soon after.
EXPIRE_INTERVAL_S = 10.0


def install() -> None:
    """Register with the embedded ticker (the outbox sweep also covers lost wake-ups)."""
    ticker.register(jobs.RELAY, 1.0, relay)
    ticker.register(jobs.EXPIRE, EXPIRE_INTERVAL_S, expire)
