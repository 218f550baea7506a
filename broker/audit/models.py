"""Audit events, and the transparency log built over them: leaves, tree nodes, checkpoints,
and the witnesses that cosign the checkpoints."""

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
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, JSONDoc
from broker.ids import new_id, utcnow

# SQLite: an INTEGER primary key is the rowid, so leaves are stored in index order.
LeafIndex = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(120))
    subject: Mapped[str | None] = mapped_column(String(120))
    # Metadata and hashes only: never content, personal data or tokens.
    details: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by the log sequencer; null until sequenced.
    leaf_index: Mapped[int | None] = mapped_column(BigInteger, unique=True)

    __table_args__ = (
        Index("ix_audit_events_kind_created", "kind", "created_at"),
        # Partial on both backends: the sequencer reads only the few unsequenced events.
        Index(
            "ix_audit_events_unsequenced",
            "created_at",
            postgresql_where="leaf_index is null",
            sqlite_where="leaf_index is null",
        ),
    )


class LogLeaf(Base):
    """One log entry: the event's canonical bytes, stored verbatim, at a fixed index."""

    __tablename__ = "log_leaves"

    index: Mapped[int] = mapped_column(LeafIndex, primary_key=True, autoincrement=False)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_events.id"), unique=True)
    leaf_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    ts: Mapped[datetime]


class LogNode(Base):
    """The hash of the perfect subtree (level, index); level 0 holds the leaf hashes."""

    __tablename__ = "log_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))

    __table_args__ = ({"sqlite_with_rowid": False},)


class Checkpoint(Base):
    """A signed tree head; the size is the key, so one size never gets two roots."""

    __tablename__ = "checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Witness(Base):
    """A witness an administrator registered: its key name, cosigner vkey and operating agency.

    Only an active witness's cosignatures are accepted; a retired one's stay served.
    """

    __tablename__ = "log_witnesses"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    vkey: Mapped[str] = mapped_column(String(200), unique=True)
    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), index=True)
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("status in ('active', 'retired')", name="status"),)


class Cosignature(Base):
    """One witness's latest cosignature line (C2SP tlog-cosignature) on one checkpoint."""

    __tablename__ = "checkpoint_cosignatures"

    size: Mapped[int] = mapped_column(
        ForeignKey("checkpoints.size"), primary_key=True, autoincrement=False
    )
    witness: Mapped[str] = mapped_column(ForeignKey("log_witnesses.name"), primary_key=True)
    timestamp: Mapped[int] = mapped_column(BigInteger)  # POSIX seconds, as in the line
    line: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_checkpoint_cosignatures_witness", "witness", "size"),)


class BudgetWindow(Base):
    """How many budgeted events (refusals, auditors' queries) one actor recorded in a minute.

    Taken by one upsert per event (`broker.audit.budget`); deleted with the window's counts
    when its summary is recorded.
    """

    __tablename__ = "audit_budget_windows"

    actor: Mapped[str] = mapped_column(String(120), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    used: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_audit_budget_windows_window_start", "window_start"),)


class BudgetCount(Base):
    """Budgeted events beyond the budget, counted instead of logged one by one.

    `code` is the refusal reason or the query name; `subject` is the events' subject ("" for
    none, as a key column cannot be null).
    """

    __tablename__ = "audit_budget_counts"

    actor: Mapped[str] = mapped_column(String(120), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(120), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]

    __table_args__ = (Index("ix_audit_budget_counts_window_start", "window_start"),)
