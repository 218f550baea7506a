"""Queries of the data lifecycle: messages due for purging, the purge itself, legal holds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.lifecycle.models import LegalHold
from broker.messages.models import Delivery, Message


def _held() -> Any:
    return exists().where(LegalHold.message_id == Message.id, LegalHold.lifted_at.is_(None))


async def due_for_purge(
    session: AsyncSession,
    agreement_id: str,
    accepted_before: datetime,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[Any]:
    """Up to `limit` messages of the agreement accepted before then, not purged, not held:
    (id, sender, mid, routing, received_at), row-locked SKIP LOCKED so two purges never take
    one twice. `after`: the (received_at, id) of the last one taken before in this run, where
    the index scan starts: without it each batch walks every entry the run has already purged
    (dead until vacuumed), and a backlog of a million purges in quadratic time."""
    query = select(Message.id, Message.sender, Message.mid, Message.routing, Message.received_at)
    if after is not None:
        query = query.where(tuple_(Message.received_at, Message.id) > tuple_(*after))
    result = await session.execute(
        query.where(
            Message.agreement_id == agreement_id,
            Message.received_at < accepted_before,
            Message.purged_at.is_(None),
            ~_held(),
        )
        .order_by(Message.received_at, Message.id)
        .limit(limit)
        .with_for_update(of=Message, skip_locked=True)
    )
    return result.all()


async def purge(session: AsyncSession, message_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Empty the envelopes and drop the recipients' acknowledgements (two statements).

    The rows stay: the message's as the replay guard and the log's reference, the deliveries'
    as the inbox's numbering (their states and times are on the log already).
    """
    await session.execute(
        update(Message)
        .where(Message.id.in_(message_ids), Message.purged_at.is_(None))
        .values(envelope="", purged_at=now)
    )
    await session.execute(
        update(Delivery).where(Delivery.message_id.in_(message_ids)).values(ack=None)
    )


async def message(session: AsyncSession, sender: str, mid: uuid.UUID) -> Message | None:
    return await session.scalar(select(Message).where(Message.sender == sender, Message.mid == mid))


async def add_hold(session: AsyncSession, hold: LegalHold) -> LegalHold:
    session.add(hold)
    await session.flush()
    return hold


async def hold(session: AsyncSession, hold_id: uuid.UUID) -> tuple[LegalHold, Message] | None:
    """The hold, row-locked, with its message."""
    row = (
        await session.execute(
            select(LegalHold, Message)
            .join(Message, Message.id == LegalHold.message_id)
            .where(LegalHold.id == hold_id)
            .with_for_update(of=LegalHold)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def holds(session: AsyncSession, *, active: bool) -> Sequence[tuple[LegalHold, Message]]:
    """Holds with their messages, newest first; only those not lifted if `active`."""
    stmt = select(LegalHold, Message).join(Message, Message.id == LegalHold.message_id)
    if active:
        stmt = stmt.where(LegalHold.lifted_at.is_(None))
    rows = await session.execute(stmt.order_by(LegalHold.placed_at.desc(), LegalHold.id))
    return [(h, m) for h, m in rows]
