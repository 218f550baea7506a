"""A recall of one message, and what became of each recipient's copy."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base
from broker.ids import new_id, utcnow


class Recall(Base):
    """The sender's signed recall of a message; one per message (a second one is the first)."""

    __tablename__ = "recalls"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id"), unique=True)
    # The notice carried to the recipients that had fetched a copy (a message of kind recall).
    notice_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("messages.id"))
    rid: Mapped[uuid.UUID]
    reason: Mapped[str] = mapped_column(String(24))
    legal_reference: Mapped[str | None] = mapped_column(String(120))
    jws: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(43))
    recalled_by: Mapped[str] = mapped_column(String(64))
    recalled_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime]
    event_id: Mapped[uuid.UUID]


class RecallRecipient(Base):
    """One recipient's copy: `withdrawn` unread, or `notified` and then its answer."""

    __tablename__ = "recall_recipients"

    recall_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("recalls.id"), primary_key=True)
    recipient: Mapped[str] = mapped_column(ForeignKey("agencies.id"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(12))
    compliance: Mapped[str | None] = mapped_column(String(12))
    legal_ground: Mapped[str | None] = mapped_column(String(120))
    compliance_jws: Mapped[str | None] = mapped_column(Text)
    compliance_sha256: Mapped[str | None] = mapped_column(String(43))
    complied_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("outcome in ('withdrawn', 'notified')", name="outcome"),
        CheckConstraint("compliance in ('erased', 'retained')", name="compliance"),
        # Overdue answers: notified copies without one (the gauge and the auditors' view).
        Index(
            "ix_recall_recipients_awaiting",
            "recall_id",
            postgresql_where=text("outcome = 'notified' and compliance is null"),
            sqlite_where=text("outcome = 'notified' and compliance is null"),
        ),
    )
