"""Agreements (versioned policy documents), operations and focal-point designations."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
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


class AgreementProposal(Base):
    """A new version of an agreement proposed to its parties; it takes effect once they approve.

    `policy_hash` is the proposed document's JCS hash, the value every approval signs.
    `status`: `open` until it is `adopted` (the version it became is `version`), `superseded`
    by a newer proposal, or `expired` at `expires_at` (the lifecycle sweep). Only an open one
    whose `base_version` is still the agreement's current version can take effect.
    """

    __tablename__ = "agreement_proposals"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agreement_id: Mapped[str] = mapped_column(ForeignKey("agreements.id"))
    base_version: Mapped[int]
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    policy_hash: Mapped[str] = mapped_column(String(43))
    status: Mapped[str] = mapped_column(String(12))
    proposed_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    version: Mapped[int | None]

    __table_args__ = (
        CheckConstraint("status in ('open', 'adopted', 'superseded', 'expired')", name="status"),
        Index("ix_agreement_proposals_agreement_id", "agreement_id", "created_at"),
        # The lifecycle sweep's look-up: open proposals by expiry.
        Index(
            "ix_agreement_proposals_open_expiry",
            "expires_at",
            postgresql_where=text("status = 'open'"),
            sqlite_where=text("status = 'open'"),
        ),
    )


class AgreementApproval(Base):
    """One party's signed approval of a proposal (`agreement-approval+jws`), kept as received."""

    __tablename__ = "agreement_approvals"

    proposal_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("agreement_proposals.id"), primary_key=True
    )
    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), primary_key=True)
    jws: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(43))
    kid: Mapped[str] = mapped_column(String(43))
    approved_by: Mapped[str] = mapped_column(String(64))
    approved_at: Mapped[datetime] = mapped_column(default=utcnow)
