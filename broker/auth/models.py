"""Principals (who acts, in which role, bound to what) and their API tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, JSONDoc
from broker.ids import new_id, utcnow


class Principal(Base):
    __tablename__ = "principals"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    agency_id: Mapped[str | None] = mapped_column(ForeignKey("agencies.id"))
    focal_point_id: Mapped[str | None] = mapped_column(ForeignKey("focal_points.id"))
    # Auditors: the agencies they oversee; null means the whole broker.
    audit_agencies: Mapped[list[str] | None] = mapped_column(JSONDoc)
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint(
            "role in ('focal_point', 'agency', 'auditor', 'admin', 'registrar')", name="role"
        ),
        CheckConstraint("status in ('active', 'disabled')", name="status"),
    )


class Credential(Base):
    """An API token: only its HMAC is stored; the secret is shown once."""

    __tablename__ = "credentials"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    principal_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("principals.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
