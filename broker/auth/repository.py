"""Queries on principals and credentials."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from broker.auth.models import Credential, Principal


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


_TOKEN = (
    select(
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
    .join(Principal, Principal.id == Credential.principal_id)
    .where(Credential.token_hash == bindparam("token_hash"))
)


def token(session: Session, token_hash: str) -> TokenRow | None:
    """One query, columns only (no ORM rows): every request of every route runs it."""
    row = session.connection().execute(_TOKEN, {"token_hash": token_hash}).first()
    return None if row is None else TokenRow(*row)


# The async submit path: the same columns, and the registry stamp in the same round trip.
_CALLER_SQL = (
    "select (select stamp from registry_state where id = 1) as stamp,"
    " c.revoked_at, c.expires_at, p.id, p.name, p.role, p.agency_id, p.focal_point_id,"
    " p.audit_agencies, p.status"
    " from (select 1) as one"
    " left join (credentials as c join principals as p on p.id = c.principal_id)"
    " on c.token_hash = %(token_hash)s"
)


async def token_and_stamp(conn: Any, token_hash: str) -> tuple[TokenRow | None, str | None]:
    """`token()` and the registry stamp (`registry.snapshot`) in one statement (async path)."""
    cur = await conn.execute(_CALLER_SQL, {"token_hash": token_hash})
    row = await cur.fetchone()
    stamp = row[0]
    return (None if row[3] is None else TokenRow(*row[1:])), stamp


def credential_by_hash(session: Session, token_hash: str) -> tuple[Credential, Principal] | None:
    row = session.execute(
        select(Credential, Principal)
        .join(Principal, Principal.id == Credential.principal_id)
        .where(Credential.token_hash == token_hash)
    ).first()
    return None if row is None else (row[0], row[1])


def principal(session: Session, principal_id: uuid.UUID) -> Principal | None:
    return session.get(Principal, principal_id)


def principal_by_name(session: Session, name: str) -> Principal | None:
    return session.scalar(select(Principal).where(Principal.name == name))


def list_principals(session: Session) -> Sequence[Principal]:
    return session.scalars(select(Principal).order_by(Principal.name)).all()


def credential(session: Session, credential_id: uuid.UUID) -> Credential | None:
    return session.get(Credential, credential_id)


def credentials_of(session: Session, principal_id: uuid.UUID) -> Sequence[Credential]:
    return session.scalars(
        select(Credential).where(Credential.principal_id == principal_id).order_by(Credential.id)
    ).all()
