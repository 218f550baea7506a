"""Recording audit events: the one owner of `audit_events` rows.

Events join the caller's transaction (metadata and hashes only, never content); the log
sequencer gives them leaves once it has committed. `record` is one event, `record_many` a batch
built with `event`, inserted by one statement.

Refusals and auditors' queries are budgeted per principal and minute (`broker.audit.budget`):
beyond the budget they are counted in the same transaction instead of inserted, and
`summarise` records one `audit.summarised` event per principal and closed minute.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import jobs
from broker.audit import budget, repository
from broker.ids import new_id, utcnow


@dataclass(frozen=True)
class NewEvent:
    """An audit event to record: the row `record_many` inserts."""

    id: uuid.UUID
    kind: str
    actor: str
    subject: str | None
    details: dict[str, Any]
    created_at: datetime


def event(
    kind: str,
    *,
    actor: str,
    subject: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> NewEvent:
    """An event for `record_many`, created now unless `at` says when it happened."""
    return NewEvent(
        id=new_id(),
        kind=kind,
        actor=actor,
        subject=subject,
        details=details or {},
        created_at=at or utcnow(),
    )


async def record_many(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """Add the events to the caller's transaction; the sequencer gives them leaves after commit.

    Budgeted events beyond their principal's budget are counted instead (`broker.audit.budget`).
    """
    if not events:
        return
    events = await budget.admit(session, events)
    if not events:
        return
    await repository.insert_events(
        session,
        [
            {
                "id": e.id,
                "kind": e.kind,
                "actor": e.actor,
                "subject": e.subject,
                "details": e.details,
                "created_at": e.created_at,
            }
            for e in events
        ],
    )
    jobs.after_commit(session, jobs.SEQUENCE)


async def record(
    session: AsyncSession,
    kind: str,
    *,
    actor: str,
    subject: str | None = None,
    details: dict[str, Any] | None = None,
) -> NewEvent:
    """Add one event to the caller's transaction (`record_many` of one).

    A budgeted event beyond its principal's budget is only counted: its id is never stored.
    """
    new = event(kind, actor=actor, subject=subject, details=details)
    await record_many(session, [new])
    return new


async def summarise(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Record the summaries of the budget windows closed by `now`; returns how many.

    The counts they hold are deleted in this same transaction (`budget.take_closed`).
    """
    now = now or utcnow()
    summaries = await budget.take_closed(session, now)
    await record_many(
        session,
        [
            event(budget.SUMMARY_KIND, actor=s.actor, subject=s.subject, details=s.details, at=now)
            for s in summaries
        ],
    )
    return len(summaries)
