"""Queries on recalls: the recall of a message, its recipients' copies, answers awaited."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.messages.models import Delivery, Message
from broker.recalls.models import Recall, RecallRecipient


async def message_for_recall(session: AsyncSession, sender: str, mid: uuid.UUID) -> Message | None:
    """The sender's message, its row locked: two recalls of it queue behind each other."""
    stmt = select(Message).where(Message.sender == sender, Message.mid == mid).with_for_update()
    return await session.scalar(stmt)


async def someone_sent(session: AsyncSession, mid: uuid.UUID) -> bool:
    """Whether any agency sent a message with this mid."""
    return await session.scalar(select(func.count()).where(Message.mid == mid)) != 0


async def recall_of(session: AsyncSession, message_id: uuid.UUID) -> Recall | None:
    return await session.scalar(select(Recall).where(Recall.message_id == message_id))


async def recipients(session: AsyncSession, recall_id: uuid.UUID) -> Sequence[RecallRecipient]:
    stmt = (
        select(RecallRecipient)
        .where(RecallRecipient.recall_id == recall_id)
        .order_by(RecallRecipient.recipient)
    )
    return (await session.scalars(stmt)).all()


async def lock_deliveries(session: AsyncSession, message_id: uuid.UUID) -> Sequence[Delivery]:
    """The message's deliveries, locked: a first fetch committing meanwhile is seen, and one
    starting after waits, then finds the copy withdrawn."""
    stmt = (
        select(Delivery)
        .where(Delivery.message_id == message_id)
        .order_by(Delivery.id)
        .with_for_update()
    )
    return (await session.scalars(stmt)).all()


async def withdraw(session: AsyncSession, delivery_ids: Sequence[uuid.UUID]) -> None:
    if delivery_ids:
        await session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.state.in_(("queued", "available")))
            .values(state="recalled")
        )


async def notified_copy(
    session: AsyncSession, recipient: str, mid: uuid.UUID
) -> tuple[Recall, RecallRecipient, Message] | None:
    """The recall of a message `recipient` was notified of, its row locked."""
    stmt = (
        select(Recall, RecallRecipient, Message)
        .join(RecallRecipient, RecallRecipient.recall_id == Recall.id)
        .join(Message, Message.id == Recall.message_id)
        .where(
            Message.mid == mid,
            RecallRecipient.recipient == recipient,
            RecallRecipient.outcome == "notified",
        )
        .with_for_update(of=RecallRecipient)
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], row[1], row[2])


async def awaiting_since(session: AsyncSession, now: datetime) -> Sequence[Any]:
    """(recipient, count) of notified copies not answered by their recall's deadline."""
    stmt = (
        select(RecallRecipient.recipient, func.count())
        .join(Recall, Recall.id == RecallRecipient.recall_id)
        .where(
            RecallRecipient.outcome == "notified",
            RecallRecipient.compliance.is_(None),
            Recall.deadline_at < now,
        )
        .group_by(RecallRecipient.recipient)
    )
    return (await session.execute(stmt)).all()
