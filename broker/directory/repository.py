"""Queries on public keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.directory.models import PublicKey


async def key(session: AsyncSession, kid: str) -> PublicKey | None:
    return await session.get(PublicKey, kid)


async def keys(
    session: AsyncSession, *, agency_id: str | None = None, use: str | None = None
) -> Sequence[PublicKey]:
    stmt = select(PublicKey).order_by(PublicKey.agency_id, PublicKey.created_at)
    if agency_id is not None:
        stmt = stmt.where(PublicKey.agency_id == agency_id)
    if use is not None:
        stmt = stmt.where(PublicKey.use == use)
    return (await session.scalars(stmt)).all()


async def keys_of_agencies(
    session: AsyncSession, agency_ids: Sequence[str], use: str
) -> Sequence[PublicKey]:
    """All keys with `use` of several agencies, in one query."""
    return (
        await session.scalars(
            select(PublicKey).where(PublicKey.agency_id.in_(agency_ids), PublicKey.use == use)
        )
    ).all()
