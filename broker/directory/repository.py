"""Queries on public keys and published directories."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.directory.models import DirectoryVersion, PublicKey


async def key(session: AsyncSession, kid: str) -> PublicKey | None:
    return await session.get(PublicKey, kid)


async def keys(
    session: AsyncSession, *, agency_id: str | None = None, use: str | None = None
) -> Sequence[PublicKey]:
    # kid breaks ties: a published directory's bytes must not depend on the scan order.
    stmt = select(PublicKey).order_by(PublicKey.agency_id, PublicKey.created_at, PublicKey.kid)
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


async def latest_version(session: AsyncSession) -> DirectoryVersion | None:
    """The directory published last (the highest version), read afresh from the database."""
    stmt = (
        select(DirectoryVersion)
        .order_by(DirectoryVersion.version.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).first()


async def insert_version(
    session: AsyncSession,
    *,
    version: int,
    sha256: str,
    keys_sha256: str,
    jws: str,
    issued_at: datetime,
    expires_at: datetime,
) -> bool:
    """Insert a directory unless its version exists; True if this call inserted it.

    `ON CONFLICT DO NOTHING`: on PostgreSQL a concurrent insert of the same version waits for
    the other transaction, then does nothing, so neither side raises; SQLite serialises writers.
    """
    stmt = (
        db.insert_for(DirectoryVersion)
        .values(
            version=version,
            sha256=sha256,
            keys_sha256=keys_sha256,
            jws=jws,
            issued_at=issued_at,
            expires_at=expires_at,
        )
        .on_conflict_do_nothing(index_elements=["version"])
        .returning(DirectoryVersion.version)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None
