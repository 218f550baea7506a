"""Periodic and woken jobs of the audit domain (ticker in embedded, Celery in production).

The sequencer's job also writes the leaf budget's summaries (`broker.audit.budget`): it is the
one audit job that runs on an interval in both profiles, and a summary it writes is sequenced
in the same run.
"""

from __future__ import annotations

from datetime import datetime

from broker import db, jobs, ticker
from broker.audit import budget, sequencer
from broker.audit import service as audit
from broker.faults import crash_point
from broker.ids import utcnow
from broker.logging import get_logger

INTERVAL_S = 0.5
MAX_BATCHES_PER_RUN = 20  # then yield to the other jobs; the next run continues

_log = get_logger("broker.audit.jobs")
# When this process next looks for closed budget windows: at start-up (windows a stopped
# broker left), then once a minute, after each window's grace.
_next_summary: list[datetime | None] = [None]


async def summarise_budgets(session_factory: db.SessionFactory, now: datetime) -> int:
    """Summarise the closed budget windows if one may have closed since the last look.

    A failure is logged and tried again on the next run; it never holds up the sequencer.
    """
    due = _next_summary[0]
    if due is not None and now < due:
        return 0
    try:
        async with session_factory() as session:
            done = await audit.summarise(session, now=now)
    except Exception as exc:
        _log.error("budget summaries not written", error=type(exc).__name__, detail=str(exc))
        return 0
    _next_summary[0] = budget.next_summary(now)
    return done


async def sequence_batches(session_factory: db.SessionFactory) -> int:
    """Sequence the backlog, one transaction and one checkpoint per batch; returns how many."""
    await summarise_budgets(session_factory, utcnow())
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
