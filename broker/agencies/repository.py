"""Queries on agencies and focal points."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies.models import Agency, FocalPoint


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
