"""Queries on push endpoints, push attempts and what a push carries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent
from broker.messages.models import Delivery, Message, Outbox
from broker.push.models import PushAttempt, PushEndpoint


def endpoint(session: Session, agency_id: str) -> PushEndpoint | None:
    return session.get(PushEndpoint, agency_id)


def targets(session: Session, delivery_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """Per delivery: its inbox item and where to push it (enabled endpoints only)."""
    rows = session.execute(
        select(
            Delivery.id,
            Delivery.recipient,
            Delivery.inbox_seq,
            Message.mid,
            Message.sender,
            Message.kind,
            Message.envelope,
            Message.receipt,
            Message.envelope_sha256,
            Message.received_at,
            AuditEvent.leaf_index,
            PushEndpoint.url,
        )
        .join(Message, Message.id == Delivery.message_id)
        .join(AuditEvent, AuditEvent.id == Message.event_id)
        .join(PushEndpoint, PushEndpoint.agency_id == Delivery.recipient)
        .where(
            Delivery.id.in_(delivery_ids),
            Delivery.inbox_seq.is_not(None),
            PushEndpoint.enabled.is_(True),
        )
    ).all()
    return {row.id: row for row in rows}


def add_attempt(
    session: Session,
    *,
    outbox_id: int,
    delivery_id: uuid.UUID,
    agency_id: str,
    attempt: int,
    now: datetime,
) -> uuid.UUID:
    attempt_id = uuid.uuid4()
    session.execute(
        insert(PushAttempt),
        [
            {
                "id": attempt_id,
                "outbox_id": outbox_id,
                "delivery_id": delivery_id,
                "agency_id": agency_id,
                "attempt": attempt,
                "status": "sending",
                "started_at": now,
            }
        ],
    )
    return attempt_id


def finish_attempt(
    session: Session,
    attempt_id: uuid.UUID,
    *,
    status: str,
    http_status: int | None,
    error: str | None,
    now: datetime,
) -> None:
    session.execute(
        update(PushAttempt)
        .where(PushAttempt.id == attempt_id)
        .values(status=status, http_status=http_status, error=error, finished_at=now)
    )


def mark_lost(session: Session, outbox_ids: Sequence[int], now: datetime) -> Sequence[Any]:
    """Attempts still `sending` on rows whose lease ran out: their worker died mid-POST."""
    if not outbox_ids:
        return []
    lost = session.execute(
        select(
            PushAttempt.id,
            PushAttempt.attempt,
            PushAttempt.agency_id,
            Delivery.inbox_seq,
            Message.mid,
            Message.sender,
        )
        .join(Delivery, Delivery.id == PushAttempt.delivery_id)
        .join(Message, Message.id == Delivery.message_id)
        .where(PushAttempt.outbox_id.in_(outbox_ids), PushAttempt.status == "sending")
    ).all()
    if lost:
        session.execute(
            update(PushAttempt)
            .where(PushAttempt.id.in_([row.id for row in lost]))
            .values(
                status="lost", error="worker lost before the outcome was recorded", finished_at=now
            )
        )
    return lost


def attempt_counts(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(PushAttempt.status, func.count()).group_by(PushAttempt.status)
    ).all()
    return {status: int(count) for status, count in rows}


def deliveries_by_mid(session: Session, recipient: str, mid: uuid.UUID) -> Sequence[Any]:
    return session.execute(
        select(Delivery.id, Delivery.inbox_seq, Message.mid, Message.sender)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.recipient == recipient, Message.mid == mid)
        .order_by(Message.sender)
    ).all()


def latest_push_row(session: Session, delivery_id: uuid.UUID) -> Outbox | None:
    return session.scalar(
        select(Outbox)
        .where(Outbox.topic == "push", Outbox.ref == delivery_id)
        .order_by(Outbox.id.desc())
        .limit(1)
        .with_for_update()
    )


def sending(session: Session, outbox_id: int) -> bool:
    """Whether an attempt on this row is in flight."""
    return (
        session.scalar(
            select(func.count()).where(
                PushAttempt.outbox_id == outbox_id, PushAttempt.status == "sending"
            )
        )
        or 0
    ) > 0
