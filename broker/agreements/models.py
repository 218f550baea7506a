"""Agreements (versioned policy documents), operations and focal-point designations."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, JSONDoc
from broker.ids import new_id, utcnow


class Agreement(Base):
    __tablename__ = "agreements"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    current_version: Mapped[int]
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgreementVersion(Base):
    """An immutable policy document; `sha256` is the JCS hash the scope decision records."""

    __tablename__ = "agreement_versions"

    agreement_id: Mapped[str] = mapped_column(ForeignKey("agreements.id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    sha256: Mapped[str] = mapped_column(String(43))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))


class Operation(Base):
    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(ForeignKey("agreements.id"), index=True)
    version: Mapped[int]
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    sha256: Mapped[str] = mapped_column(String(43))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("starts_at < ends_at", name="window"),)


class Designation(Base):
    """A focal point designated to exchange under an agreement, for a period."""

    __tablename__ = "designations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    focal_point_id: Mapped[str] = mapped_column(ForeignKey("focal_points.id"))
    agreement_id: Mapped[str] = mapped_column(ForeignKey("agreements.id"))
    valid_from: Mapped[date]
    valid_until: Mapped[date | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_designations_fp_agreement", "focal_point_id", "agreement_id"),
        CheckConstraint("valid_until is null or valid_from <= valid_until", name="validity"),
    )
