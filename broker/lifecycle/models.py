"""Legal holds: a named message kept past its agreement's retention until the hold is lifted."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base
from broker.ids import new_id, utcnow


class LegalHold(Base):
    """An auditor's or administrator's hold on one message, with its reason and reference."""

    __tablename__ = "legal_holds"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id"))
    reason: Mapped[str] = mapped_column(String(200))
    reference: Mapped[str] = mapped_column(String(120))
    placed_by: Mapped[str] = mapped_column(String(120))
    placed_at: Mapped[datetime] = mapped_column(default=utcnow)
    lifted_by: Mapped[str | None] = mapped_column(String(120))
    lifted_at: Mapped[datetime | None]
    lift_reason: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        # The purge asks "is any hold on this message still active?" for every candidate.
        Index(
            "ix_legal_holds_active",
            "message_id",
            postgresql_where=text("lifted_at is null"),
            sqlite_where=text("lifted_at is null"),
        ),
    )
