"""Queries on agreements, their versions, operations and designations."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agreements.models import (
    Agreement,
    AgreementApproval,
    AgreementProposal,
    AgreementVersion,
    Designation,
    Operation,
)


async def agreement(session: AsyncSession, agreement_id: str) -> Agreement | None:
    return await session.get(Agreement, agreement_id)


async def current_version(session: AsyncSession, agreement_id: str) -> AgreementVersion | None:
    return await session.scalar(
        select(AgreementVersion)
        .join(Agreement, Agreement.id == AgreementVersion.agreement_id)
        .where(
            AgreementVersion.agreement_id == agreement_id,
            AgreementVersion.version == Agreement.current_version,
        )
    )


async def current_versions(session: AsyncSession) -> Sequence[AgreementVersion]:
    return (
        await session.scalars(
            select(AgreementVersion)
            .join(Agreement, Agreement.id == AgreementVersion.agreement_id)
            .where(AgreementVersion.version == Agreement.current_version)
            .order_by(AgreementVersion.agreement_id)
        )
    ).all()


async def versions(session: AsyncSession, agreement_id: str) -> Sequence[AgreementVersion]:
    return (
        await session.scalars(
            select(AgreementVersion)
            .where(AgreementVersion.agreement_id == agreement_id)
            .order_by(AgreementVersion.version)
        )
    ).all()


async def operation(session: AsyncSession, operation_id: str) -> Operation | None:
    return await session.get(Operation, operation_id)


async def operations(session: AsyncSession, agreement_id: str | None = None) -> Sequence[Operation]:
    stmt = select(Operation).order_by(Operation.id)
    if agreement_id is not None:
        stmt = stmt.where(Operation.agreement_id == agreement_id)
    return (await session.scalars(stmt)).all()


async def designations(
    session: AsyncSession, *, focal_point_id: str | None = None, agreement_id: str | None = None
) -> Sequence[Designation]:
    stmt = select(Designation).order_by(Designation.focal_point_id, Designation.valid_from)
    if focal_point_id is not None:
        stmt = stmt.where(Designation.focal_point_id == focal_point_id)
    if agreement_id is not None:
        stmt = stmt.where(Designation.agreement_id == agreement_id)
    return (await session.scalars(stmt)).all()


# --- proposals and approvals ---------------------------------------------------------------


async def lock_agreement(session: AsyncSession, agreement_id: str) -> Agreement | None:
    """The agreement, its row locked: changes to one agreement are applied one at a time."""
    return await session.scalar(
        select(Agreement).where(Agreement.id == agreement_id).with_for_update()
    )


async def proposal(
    session: AsyncSession, proposal_id: uuid.UUID, *, lock: bool = False
) -> AgreementProposal | None:
    stmt = select(AgreementProposal).where(AgreementProposal.id == proposal_id)
    return await session.scalar(stmt.with_for_update() if lock else stmt)


async def proposals(session: AsyncSession, agreement_id: str) -> Sequence[AgreementProposal]:
    return (
        await session.scalars(
            select(AgreementProposal)
            .where(AgreementProposal.agreement_id == agreement_id)
            .order_by(AgreementProposal.created_at, AgreementProposal.id)
        )
    ).all()


async def open_proposals(session: AsyncSession, agreement_id: str) -> Sequence[AgreementProposal]:
    return (
        await session.scalars(
            select(AgreementProposal)
            .where(
                AgreementProposal.agreement_id == agreement_id,
                AgreementProposal.status == "open",
            )
            .with_for_update()
        )
    ).all()


async def lapsed_proposals(
    session: AsyncSession, now: datetime, limit: int
) -> Sequence[AgreementProposal]:
    """Open proposals past their expiry, locked; one an approval holds is left for next time."""
    return (
        await session.scalars(
            select(AgreementProposal)
            .where(AgreementProposal.status == "open", AgreementProposal.expires_at <= now)
            .order_by(AgreementProposal.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def approvals(
    session: AsyncSession, proposal_ids: Sequence[uuid.UUID]
) -> Sequence[AgreementApproval]:
    if not proposal_ids:
        return []
    return (
        await session.scalars(
            select(AgreementApproval)
            .where(AgreementApproval.proposal_id.in_(proposal_ids))
            .order_by(AgreementApproval.approved_at, AgreementApproval.agency_id)
        )
    ).all()
