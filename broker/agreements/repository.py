"""Queries on agreements, their versions, operations and designations."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.agreements.models import Agreement, AgreementVersion, Designation, Operation


def agreement(session: Session, agreement_id: str) -> Agreement | None:
    return session.get(Agreement, agreement_id)


def current_version(session: Session, agreement_id: str) -> AgreementVersion | None:
    return session.scalar(
        select(AgreementVersion)
        .join(Agreement, Agreement.id == AgreementVersion.agreement_id)
        .where(
            AgreementVersion.agreement_id == agreement_id,
            AgreementVersion.version == Agreement.current_version,
        )
    )


def current_versions(session: Session) -> Sequence[AgreementVersion]:
    return session.scalars(
        select(AgreementVersion)
        .join(Agreement, Agreement.id == AgreementVersion.agreement_id)
        .where(AgreementVersion.version == Agreement.current_version)
        .order_by(AgreementVersion.agreement_id)
    ).all()


def versions(session: Session, agreement_id: str) -> Sequence[AgreementVersion]:
    return session.scalars(
        select(AgreementVersion)
        .where(AgreementVersion.agreement_id == agreement_id)
        .order_by(AgreementVersion.version)
    ).all()


def operation(session: Session, operation_id: str) -> Operation | None:
    return session.get(Operation, operation_id)


def operations(session: Session, agreement_id: str | None = None) -> Sequence[Operation]:
    stmt = select(Operation).order_by(Operation.id)
    if agreement_id is not None:
        stmt = stmt.where(Operation.agreement_id == agreement_id)
    return session.scalars(stmt).all()


def designations(
    session: Session, *, focal_point_id: str | None = None, agreement_id: str | None = None
) -> Sequence[Designation]:
    stmt = select(Designation).order_by(Designation.focal_point_id, Designation.valid_from)
    if focal_point_id is not None:
        stmt = stmt.where(Designation.focal_point_id == focal_point_id)
    if agreement_id is not None:
        stmt = stmt.where(Designation.agreement_id == agreement_id)
    return session.scalars(stmt).all()
