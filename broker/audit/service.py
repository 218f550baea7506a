"""Recording audit events: same transaction as the action, metadata and hashes only."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from broker import jobs
from broker.audit import repository
from broker.audit.models import AuditEvent
from broker.ids import new_id, utcnow

SEQUENCE_JOB = "log.sequence"


def record(
    session: Session,
    kind: str,
    *,
    actor: str,
    subject: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an event to the caller's transaction; the sequencer gives it a leaf after commit."""
    event = AuditEvent(
        id=new_id(),
        kind=kind,
        actor=actor,
        subject=subject,
        details=details or {},
        created_at=utcnow(),
    )
    jobs.after_commit(session, SEQUENCE_JOB)
    return repository.add(session, event)
