"""Queries on public keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.directory.models import PublicKey


def key(session: Session, kid: str) -> PublicKey | None:
    return session.get(PublicKey, kid)


def keys(
    session: Session, *, agency_id: str | None = None, use: str | None = None
) -> Sequence[PublicKey]:
    stmt = select(PublicKey).order_by(PublicKey.agency_id, PublicKey.created_at)
    if agency_id is not None:
        stmt = stmt.where(PublicKey.agency_id == agency_id)
    if use is not None:
        stmt = stmt.where(PublicKey.use == use)
    return session.scalars(stmt).all()


def keys_of_agencies(session: Session, agency_ids: Sequence[str], use: str) -> Sequence[PublicKey]:
    """All keys with `use` of several agencies, in one query."""
    return session.scalars(
        select(PublicKey).where(PublicKey.agency_id.in_(agency_ids), PublicKey.use == use)
    ).all()
