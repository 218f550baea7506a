"""Periodic and woken jobs of the inbox domain (ticker in embedded, Celery in production)."""

from __future__ import annotations

from broker import db, jobs, ticker
from broker.inbox import service


def relay() -> int:
    """Drain the outbox: make every queued delivery available (sync callers: task, ticker)."""
    return db.run(service.relay_all, db.session_scope)


def install() -> None:
    """Register with the embedded ticker (the outbox sweep also covers lost wake-ups)."""
    ticker.register(jobs.RELAY, 1.0, relay)
