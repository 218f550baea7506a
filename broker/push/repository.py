"""Queries on push endpoints, push attempts and what a push carries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.inbox import repository as inbox_repository
from broker.messages.models import OUTBOX_PUSH, Delivery, Message, Outbox
from broker.push.models import PushAttempt, PushEndpoint


async def endpoint(session: AsyncSession, agency_id: str) -> PushEndpoint | None:
    return await session.get(PushEndpoint, agency_id)


async def targets(
    session: AsyncSession, delivery_ids: Sequence[uuid.UUID], now: datetime
) -> dict[uuid.UUID, Any]:
    """Per delivery: its inbox item and where to push it (enabled endpoints only; never a
    message whose `exp` has passed, as the inbox never serves one)."""
    if not delivery_ids:
        return {}
    rows = await session.execute(
        inbox_repository.items(Delivery.recipient, PushEndpoint.url)
        .join(PushEndpoint, PushEndpoint.agency_id == Delivery.recipient)
        .where(
            Delivery.id.in_(delivery_ids),
            Delivery.inbox_seq.is_not(None),
            PushEndpoint.enabled.is_(True),
            inbox_repository.servable(now),
        )
    )
    return {row.id: row for row in rows}


async def add_attempts(session: AsyncSession, attempts: Sequence[dict[str, Any]]) -> None:
    """Attempts about to be made, as `sending` (one INSERT)."""
    if attempts:
        await session.execute(insert(PushAttempt), [{**a, "status": "sending"} for a in attempts])


async def finish_attempt(
    session: AsyncSession,
    attempt_id: uuid.UUID,
    *,
    status: str,
    http_status: int | None,
    error: str | None,
    now: datetime,
) -> None:
    await session.execute(
        update(PushAttempt)
        .where(PushAttempt.id == attempt_id)
        .values(status=status, http_status=http_status, error=error, finished_at=now)
    )


async def mark_lost(
    session: AsyncSession, outbox_ids: Sequence[int], now: datetime
) -> Sequence[Any]:
    """Attempts still `sending` on rows whose lease ran out: their worker died mid-POST."""
    if not outbox_ids:
        return []
    lost = (
        await session.execute(
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
        )
    ).all()
    if lost:
        await session.execute(
            update(PushAttempt)
            .where(PushAttempt.id.in_([row.id for row in lost]))
            .values(
                status="lost", error="worker lost before the outcome was recorded", finished_at=now
            )
        )
    return lost


async def deliveries_by_mid(session: AsyncSession, recipient: str, mid: uuid.UUID) -> Sequence[Any]:
    result = await session.execute(
        select(Delivery.id, Delivery.inbox_seq, Message.mid, Message.sender)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.recipient == recipient, Message.mid == mid)
        .order_by(Message.sender)
    )
    return result.all()


async def latest_push_row(session: AsyncSession, delivery_id: uuid.UUID) -> Outbox | None:
    return await session.scalar(
        select(Outbox)
        .where(Outbox.topic == OUTBOX_PUSH, Outbox.ref == delivery_id)
        .order_by(Outbox.id.desc())
        .limit(1)
        .with_for_update()
    )


async def sending(session: AsyncSession, outbox_id: int) -> bool:
    """Whether an attempt on this row is in flight."""
    count = await session.scalar(
        select(func.count()).where(
            PushAttempt.outbox_id == outbox_id, PushAttempt.status == "sending"
        )
    )
    return (count or 0) > 0
