"""Public keys of focal points (signing) and agencies (encryption), and the signed directories
published from them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, JSONDoc
from broker.ids import utcnow


class PublicKey(Base):
    __tablename__ = "keys"

    kid: Mapped[str] = mapped_column(String(43), primary_key=True)
    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), index=True)
    focal_point_id: Mapped[str | None] = mapped_column(ForeignKey("focal_points.id"), index=True)
    use: Mapped[str] = mapped_column(String(3))
    jwk: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(8), default="active")
    retired_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revocation_reason: Mapped[str | None] = mapped_column(String(16))
    compromised_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("use in ('sig', 'enc')", name="use"),
        CheckConstraint("status in ('active', 'retired', 'revoked')", name="status"),
        CheckConstraint(
            "revocation_reason is null or revocation_reason in ('superseded', 'key_compromise')",
            name="revocation_reason",
        ),
        CheckConstraint("not_before < not_after", name="validity"),
    )

    def usable_at(self, moment: datetime) -> bool:
        """Active and inside its validity window at `moment`."""
        return self.status == "active" and self.not_before <= moment < self.not_after


class DirectoryVersion(Base):
    """One published, broker-signed key directory (PROTOCOL.md 6.2): served byte for byte.

    `version` is the primary key, so two workers publishing at once cannot both own a number:
    the loser reads the winner's row back (`repository.insert_version`).
    """

    __tablename__ = "directory_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(43), unique=True)
    # Hash of the JCS of the published keys: what `publish` compares to decide whether the
    # key set changed, without parsing the stored JWS.
    keys_sha256: Mapped[str] = mapped_column(String(43))
    jws: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("version > 0", name="version"),
        CheckConstraint("issued_at < expires_at", name="lifetime"),
    )
