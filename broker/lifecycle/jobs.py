"""The lifecycle's periodic job (embedded ticker, or Celery beat in production)."""

from __future__ import annotations

from broker import db, jobs, ticker
from broker.agreements import changes
from broker.lifecycle import service

# Retention is counted in years: a purge a minute late is on time.
PURGE_INTERVAL_S = 60.0


def purge() -> int:
    """Purge every message past its agreement's retention, batch by batch (task, ticker);
    then close the agreement proposals past their expiry, the other date-driven sweep."""
    purged = db.run(service.purge_all, db.session_scope)
    db.call(changes.expire_proposals)
    return purged


def install() -> None:
    """Register with the embedded ticker."""
    ticker.register(jobs.PURGE, PURGE_INTERVAL_S, purge)
