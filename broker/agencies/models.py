"""Agencies and their focal points."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base
from broker.ids import utcnow

# As `schemas.AgencyKind`: a state's agencies, then bodies that are not a state's agency.
KINDS = (
    "'customs', 'police', 'prosecution', 'wildlife', 'other', "
    "'international_body', 'regional_liaison_office', 'border_liaison_office'"
)


class Agency(Base):
    __tablename__ = "agencies"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # None for an international or regional body (INT- ids).
    country: Mapped[str | None] = mapped_column(String(2))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("status in ('active', 'suspended')", name="status"),
        CheckConstraint(f"kind in ({KINDS})", name="kind"),
    )


class FocalPoint(Base):
    __tablename__ = "focal_points"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(200))
    locality: Mapped[str | None] = mapped_column(String(200))
    subdivision: Mapped[str | None] = mapped_column(String(6))
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("status in ('active', 'suspended')", name="status"),)
