"""Queries on agencies and focal points."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies.models import Agency, FocalPoint
from broker.messages.models import Delivery, Message


async def agency(session: AsyncSession, agency_id: str) -> Agency | None:
    return await session.get(Agency, agency_id)


async def agencies(session: AsyncSession, ids: Sequence[str] | None = None) -> Sequence[Agency]:
    stmt = select(Agency).order_by(Agency.id)
    if ids is not None:
        stmt = stmt.where(Agency.id.in_(ids))
    return (await session.scalars(stmt)).all()


async def focal_point(session: AsyncSession, focal_point_id: str) -> FocalPoint | None:
    return await session.get(FocalPoint, focal_point_id)


async def focal_points(session: AsyncSession, agency_id: str | None = None) -> Sequence[FocalPoint]:
    stmt = select(FocalPoint).order_by(FocalPoint.id)
    if agency_id is not None:
        stmt = stmt.where(FocalPoint.agency_id == agency_id)
    return (await session.scalars(stmt)).all()


async def held_messages(session: AsyncSession, agency_id: str) -> Sequence[uuid.UUID]:
    """The messages with a delivery to `agency_id` still queued, oldest first: those the relay
    held while the agency was suspended (and any the relay has not reached yet)."""
    stmt = (
        select(Message.id)
        .join(Delivery, Delivery.message_id == Message.id)
        .where(Delivery.recipient == agency_id, Delivery.state == "queued")
        .order_by(Message.received_at, Message.id)
    )
    return (await session.scalars(stmt)).all()
