"""The push job: the `push.deliver` task in production, a ticker job in the embedded profile."""

from __future__ import annotations

from broker import db, jobs, ticker
from broker.push import service

INTERVAL_S = 2.0  # retries are due by their time in the database; this sweep picks them up


def deliver() -> int:
    """POST every due push; bounded in time so it never outlives the task visibility timeout."""
    return db.run(service.deliver_due, db.session_scope)


def install() -> None:
    """Register with the embedded ticker (relay commits that add pushes also wake it)."""
    ticker.register(jobs.PUSH, INTERVAL_S, deliver)
