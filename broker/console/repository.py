"""Queries on console sessions and verification runs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.auth.models import Credential, Principal
from broker.auth.repository import TOKEN_COLUMNS, TokenRow
from broker.console.models import ConsoleSession, VerificationRun

# --- sessions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A console session, and its token and principal as authentication reads them."""

    id: uuid.UUID
    credential_id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    revoked_at: datetime | None
    token: TokenRow


# The session with its credential and principal, in one statement (every console request).
_SESSION = (
    select(
        ConsoleSession.id,
        ConsoleSession.credential_id,
        ConsoleSession.created_at,
        ConsoleSession.last_seen_at,
        ConsoleSession.revoked_at,
        *TOKEN_COLUMNS,
    )
    .join(Credential, Credential.id == ConsoleSession.credential_id)
    .join(Principal, Principal.id == ConsoleSession.principal_id)
)


async def session_by_hash(session: AsyncSession, session_hash: str) -> SessionRow | None:
    """The session whose id hashes to `session_hash`, with its token's state."""
    row = (
        await session.execute(_SESSION.where(ConsoleSession.session_hash == session_hash))
    ).first()
    if row is None:
        return None
    sid, credential_id, created_at, last_seen_at, revoked_at, *token = row
    return SessionRow(sid, credential_id, created_at, last_seen_at, revoked_at, TokenRow(*token))


async def touch(session: AsyncSession, session_id: uuid.UUID, now: datetime) -> None:
    """Slide the idle limit: the session was used `now`."""
    await session.execute(
        update(ConsoleSession).where(ConsoleSession.id == session_id).values(last_seen_at=now)
    )


async def revoke(session: AsyncSession, session_id: uuid.UUID, now: datetime) -> bool:
    """End a session; False if it had ended already."""
    result: Any = await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(result.rowcount)


async def purge_sessions(session: AsyncSession, created_before: datetime) -> None:
    """Delete the sessions past their absolute limit (they can never be used again)."""
    await session.execute(delete(ConsoleSession).where(ConsoleSession.created_at < created_before))


# --- verification runs ---------------------------------------------------------------------


async def active_run(session: AsyncSession) -> VerificationRun | None:
    """The queued or running verification, if any (there is at most one)."""
    return await session.scalar(select(VerificationRun).where(VerificationRun.active.is_(True)))


async def latest_run(session: AsyncSession) -> VerificationRun | None:
    """The most recently requested verification run."""
    return await session.scalar(
        select(VerificationRun)
        .order_by(VerificationRun.requested_at.desc(), VerificationRun.id.desc())
        .limit(1)
    )


async def latest_finished(
    session: AsyncSession, *, statuses: tuple[str, ...] = ("ok", "failed", "error")
) -> VerificationRun | None:
    """The most recently finished run with one of `statuses`."""
    return await session.scalar(
        select(VerificationRun)
        .where(VerificationRun.status.in_(statuses))
        .order_by(VerificationRun.finished_at.desc(), VerificationRun.id.desc())
        .limit(1)
    )


async def add_run(session: AsyncSession, values: Mapping[str, Any]) -> bool:
    """Insert a run unless another one is active (the unique `active`); True if inserted."""
    stmt = db.insert_for(VerificationRun.__table__).values(**values).on_conflict_do_nothing()
    result: Any = await session.execute(stmt)
    return bool(result.rowcount)


async def update_run(
    session: AsyncSession,
    run_id: uuid.UUID,
    *,
    status: str,
    attempts: int,
    values: Mapping[str, Any],
) -> bool:
    """Compare-and-set: change the run only if it is still (`status`, `attempts`)."""
    result: Any = await session.execute(
        update(VerificationRun)
        .where(
            VerificationRun.id == run_id,
            VerificationRun.status == status,
            VerificationRun.attempts == attempts,
        )
        .values(**values)
    )
    return bool(result.rowcount)


async def purge_runs(session: AsyncSession, requested_before: datetime) -> None:
    """Delete finished runs requested before then (their outcomes are on the log too)."""
    await session.execute(
        delete(VerificationRun).where(
            VerificationRun.active.is_(None), VerificationRun.requested_at < requested_before
        )
    )
