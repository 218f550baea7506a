"""Messages as received (envelope bytes verbatim), their deliveries, and the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, JSONDoc
from broker.ids import new_id, utcnow


class Message(Base):
    """An accepted envelope. `(sender, mid)` is unique forever: the replay guard."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    sender: Mapped[str] = mapped_column(ForeignKey("agencies.id"))
    mid: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(12))
    sender_fp: Mapped[str] = mapped_column(String(48))
    sender_kid: Mapped[str] = mapped_column(String(43))
    agreement_id: Mapped[str] = mapped_column(String(48))
    operation_id: Mapped[str | None] = mapped_column(String(48))
    offence: Mapped[str] = mapped_column(String(40))
    handling: Mapped[str] = mapped_column(String(20))
    routing: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    in_reply_to: Mapped[uuid.UUID | None]
    # A correction names the sender's earlier message it replaces (once: unique per sender).
    supersedes: Mapped[uuid.UUID | None]
    envelope: Mapped[str] = mapped_column(Text)
    envelope_sha256: Mapped[str] = mapped_column(String(43))
    policy_sha256: Mapped[str] = mapped_column(String(43))
    receipt: Mapped[str] = mapped_column(Text)
    event_id: Mapped[uuid.UUID]
    iat: Mapped[int] = mapped_column(BigInteger)
    exp: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the agreement's retention purged the envelope (now empty) and the recipients'
    # acknowledgements; the row stays as the replay guard and the log's reference.
    purged_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("sender", "mid", name="uq_messages_sender_mid"),
        UniqueConstraint("sender", "supersedes", name="uq_messages_sender_supersedes"),
        # `recall`: the notice of a recall, carried to the recipients that had fetched a copy.
        CheckConstraint("kind in ('alert', 'feedback', 'recall')", name="kind"),
        # Feedback names its alert by mid alone (`repository.received_alerts`).
        Index("ix_messages_mid", "mid"),
        # The retention purge's search: per agreement, oldest first, not yet purged
        # (`broker/lifecycle/repository.py`, `due_for_purge`; a purged row leaves it).
        Index(
            "ix_messages_due_for_purge",
            "agreement_id",
            "received_at",
            "id",
            postgresql_where=text("purged_at is null"),
            sqlite_where=text("purged_at is null"),
        ),
        # PostgreSQL: a row with an envelope of up to ~7 KB stays in the table, uncompressed:
        # ciphertext does not compress, and TOAST would try, then write a second table.
        {"postgresql_with": {"toast_tuple_target": "8160"}},
    )


class Delivery(Base):
    """One message for one recipient agency: queued -> available -> fetched -> acknowledged,
    or `expired` from queued or available when the message's `exp` passes before a fetch.

    `inbox_seq` is assigned when the delivery becomes available, under the recipient's
    counter row lock, so sequence numbers commit in order and a cursor never skips one.
    """

    __tablename__ = "deliveries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id"))
    recipient: Mapped[str] = mapped_column(ForeignKey("agencies.id"))
    state: Mapped[str] = mapped_column(String(12), default="queued")
    inbox_seq: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    available_at: Mapped[datetime | None]
    fetched_at: Mapped[datetime | None]
    acked_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    ack_status: Mapped[str | None] = mapped_column(String(12))
    ack_reason: Mapped[str | None] = mapped_column(String(40))
    ack_sha256: Mapped[str | None] = mapped_column(String(43))
    ack: Mapped[str | None] = mapped_column(Text)
    # The message's priority is urgent: the inbox serves such a copy ahead of the backlog.
    urgent: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (
        UniqueConstraint("message_id", "recipient", name="uq_deliveries_message_recipient"),
        UniqueConstraint("recipient", "inbox_seq", name="uq_deliveries_recipient_seq"),
        CheckConstraint(
            "state in ('queued', 'available', 'fetched', 'acknowledged', 'expired', 'recalled')",
            name="state",
        ),
        Index("ix_deliveries_queued", "state", "created_at"),
        Index(
            "ix_deliveries_urgent_waiting",
            "recipient",
            "inbox_seq",
            postgresql_where=text("urgent and state = 'available'"),
            sqlite_where=text("urgent and state = 'available'"),
        ),
    )


class InboxCounter(Base):
    """The next inbox sequence number of an agency; its row lock orders deliveries."""

    __tablename__ = "inbox_counters"

    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), primary_key=True)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=1)


# Outbox topics (see `Outbox`).
OUTBOX_DELIVER = "deliver"
OUTBOX_PUSH = "push"


class Outbox(Base):
    """Work committed with the action that caused it; the relay and the sweep drain it.

    Topics: `deliver` (ref = message id: make its deliveries available) and `push` (ref =
    delivery id: POST it to the recipient's push endpoint). A row is pending until `done_at`;
    `attempts` counts tries that failed or were cut short, `next_attempt_at` holds the backoff
    (or a push lease), and after too many attempts the row is dead-lettered (`dead_at`), kept
    for an operator, never deleted. Retry schedules live here, not in Celery countdowns.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    topic: Mapped[str] = mapped_column(String(32))
    ref: Mapped[uuid.UUID]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    done_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(200))
    dead_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_outbox_pending",
            "topic",
            "id",
            postgresql_where="done_at is null and dead_at is null",
            sqlite_where=text("done_at is null and dead_at is null"),
        ),
    )
