"""Periodic and woken jobs of the audit domain (ticker in embedded, Celery in production)."""

from __future__ import annotations

from broker import db, jobs, ticker
from broker.audit import sequencer
from broker.faults import crash_point

INTERVAL_S = 0.5
MAX_BATCHES_PER_RUN = 20  # then yield to the other jobs; the next run continues


async def sequence_batches(session_factory: db.SessionFactory) -> int:
    """Sequence the backlog, one transaction and one checkpoint per batch; returns how many."""
    total = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        async with session_factory() as session:
            done = await sequencer.sequence(session)
        crash_point("log.after_commit")
        total += done
        if done < sequencer.MAX_BATCH:
            break
    return total


def sequence_pending() -> int:
    """The job (Celery task, embedded ticker): `sequence_batches` on this process's event loop."""
    return db.run(sequence_batches, db.session_scope)


def install() -> None:
    """Register the sequencer with the embedded ticker (commits that record events wake it)."""
    ticker.register(jobs.SEQUENCE, INTERVAL_S, sequence_pending)
