"""Queries on agencies and focal points."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.agencies.models import Agency, FocalPoint


def agency(session: Session, agency_id: str) -> Agency | None:
    return session.get(Agency, agency_id)


def agencies(session: Session, ids: Sequence[str] | None = None) -> Sequence[Agency]:
    stmt = select(Agency).order_by(Agency.id)
    if ids is not None:
        stmt = stmt.where(Agency.id.in_(ids))
    return session.scalars(stmt).all()


def focal_point(session: Session, focal_point_id: str) -> FocalPoint | None:
    return session.get(FocalPoint, focal_point_id)


def focal_points(session: Session, agency_id: str | None = None) -> Sequence[FocalPoint]:
    stmt = select(FocalPoint).order_by(FocalPoint.id)
    if agency_id is not None:
        stmt = stmt.where(FocalPoint.agency_id == agency_id)
    return session.scalars(stmt).all()
