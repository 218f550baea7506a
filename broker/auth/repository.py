"""Queries on principals and credentials."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies.models import Agency, FocalPoint
from broker.auth.models import Credential, Principal
from broker.registry.models import RegistryState


@dataclass(frozen=True, slots=True)
class TokenRow:
    """What authenticating a request needs of a credential and its principal."""

    revoked_at: datetime | None
    expires_at: datetime
    principal_id: uuid.UUID
    name: str
    role: str
    agency_id: str | None
    focal_point_id: str | None
    audit_agencies: list[str] | None
    status: str
    # The bound agency's and focal point's status (None: not bound, or not read, as by the
    # console, whose auditors are bound to neither).
    agency_status: str | None = None
    focal_point_status: str | None = None


# Every request of every route runs this: columns only (no ORM rows), and the registry stamp
# (`registry.snapshot`) in the same round trip. The token side is outer-joined to a one-row
# relation so that the stamp comes back for an unknown token too.
# A TokenRow's columns, in its order (the console's sessions read them too).
TOKEN_COLUMNS = (
    Credential.revoked_at,
    Credential.expires_at,
    Principal.id,
    Principal.name,
    Principal.role,
    Principal.agency_id,
    Principal.focal_point_id,
    Principal.audit_agencies,
    Principal.status,
)
_ONE = select(literal_column("1").label("one")).subquery("one")
_TOKEN_AND_STAMP = (
    select(
        select(RegistryState.stamp).where(RegistryState.id == 1).scalar_subquery().label("stamp"),
        *TOKEN_COLUMNS,
        Agency.status.label("agency_status"),
        FocalPoint.status.label("focal_point_status"),
    )
    .select_from(_ONE)
    .outerjoin(
        # A join of the tables, not of the ORM classes: the latter is flattened out of the
        # parentheses and the outer join would cover credentials alone.
        Credential.__table__.join(Principal.__table__, Principal.id == Credential.principal_id)
        # The binding's status, for refusing a suspended one (`auth.service.caller_of`).
        .outerjoin(Agency.__table__, Agency.id == Principal.agency_id)
        .outerjoin(FocalPoint.__table__, FocalPoint.id == Principal.focal_point_id),
        Credential.token_hash == bindparam("token_hash"),
    )
)


async def token_and_stamp(
    session: AsyncSession, token_hash: str
) -> tuple[TokenRow | None, str | None]:
    """The token's row (None if unknown) and the registry stamp, in one statement."""
    row = (await session.execute(_TOKEN_AND_STAMP, {"token_hash": token_hash})).one()
    return (None if row.id is None else TokenRow(*row[1:])), row.stamp


async def credential_by_hash(
    session: AsyncSession, token_hash: str
) -> tuple[Credential, Principal] | None:
    row = (
        await session.execute(
            select(Credential, Principal)
            .join(Principal, Principal.id == Credential.principal_id)
            .where(Credential.token_hash == token_hash)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def principal(session: AsyncSession, principal_id: uuid.UUID) -> Principal | None:
    return await session.get(Principal, principal_id)


async def principal_by_name(session: AsyncSession, name: str) -> Principal | None:
    return await session.scalar(select(Principal).where(Principal.name == name))


async def set_status(session: AsyncSession, principal: Principal, status: str) -> None:
    """Change a principal's status ('active' or 'disabled'); the caller logs it."""
    principal.status = status
    await session.flush()


async def list_principals(
    session: AsyncSession, *, agency_id: str | None = None
) -> Sequence[Principal]:
    query = select(Principal).order_by(Principal.name)
    if agency_id is not None:
        query = query.where(Principal.agency_id == agency_id)
    return (await session.scalars(query)).all()


async def credential(session: AsyncSession, credential_id: uuid.UUID) -> Credential | None:
    return await session.get(Credential, credential_id)


async def credentials_of(session: AsyncSession, principal_id: uuid.UUID) -> Sequence[Credential]:
    return (
        await session.scalars(
            select(Credential)
            .where(Credential.principal_id == principal_id)
            .order_by(Credential.id)
        )
    ).all()
