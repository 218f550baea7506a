"""Recording audit events: the one owner of `audit_events` rows.

Events join the caller's transaction (metadata and hashes only, never content); the log
sequencer gives them leaves once it has committed. `record` is one event, `record_many` a batch
built with `event`, inserted by one statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import jobs
from broker.audit import repository
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
    """Add the events to the caller's transaction; the sequencer gives them leaves after commit."""
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
    """Add one event to the caller's transaction (`record_many` of one)."""
    new = event(kind, actor=actor, subject=subject, details=details)
    await record_many(session, [new])
    return new
