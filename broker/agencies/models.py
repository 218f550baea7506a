"""Agencies and their focal points."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base
from broker.ids import utcnow


class Agency(Base):
    __tablename__ = "agencies"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("status in ('active', 'suspended')", name="status"),
        CheckConstraint(
            "kind in ('customs', 'police', 'prosecution', 'wildlife', 'other')", name="kind"
        ),
    )


class FocalPoint(Base):
    __tablename__ = "focal_points"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("status in ('active', 'suspended')", name="status"),)
