"""Periodic and woken jobs of the audit domain (ticker in embedded, Celery in production)."""

from __future__ import annotations

from broker import db, ticker
from broker.audit import sequencer
from broker.faults import crash_point

SEQUENCE = "log.sequence"
INTERVAL_S = 0.5
MAX_BATCHES_PER_RUN = 20  # then yield to the other jobs; the next run continues


def sequence_pending() -> int:
    """Sequence the backlog, one transaction and one checkpoint per batch."""
    total = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        with db.session_scope() as session:
            done = sequencer.sequence(session)
        crash_point("log.after_commit")
        total += done
        if done < sequencer.MAX_BATCH:
            break
    return total


def install() -> None:
    """Register the sequencer with the embedded ticker (commits that record events wake it)."""
    ticker.register(SEQUENCE, INTERVAL_S, sequence_pending)
