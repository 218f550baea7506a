"""Queries on agreements, their versions, operations and designations."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agreements.models import Agreement, AgreementVersion, Designation, Operation


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
