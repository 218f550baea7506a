"""Read-only queries for the invariant checker: one consistent snapshot of the record."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent, Checkpoint, LogLeaf
from broker.messages.models import Delivery, Message, Outbox

# The message-flow actions that each have exactly one audit event.
FLOW_KINDS = ("msg.accepted", "msg.rejected", "msg.delivered", "msg.fetched", "msg.acked")


def snapshot(session: Session) -> None:
    """Read everything that follows from one snapshot (PostgreSQL: REPEATABLE READ, read only)."""
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(
            execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        )


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: uuid.UUID
    sender: str
    mid: str
    recipients: tuple[str, ...]
    event_id: uuid.UUID
    envelope_sha256: str


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    message_id: uuid.UUID
    recipient: str
    state: str
    inbox_seq: int | None
    fetched_at: datetime | None
    acked_at: datetime | None
    ack_sha256: str | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: uuid.UUID
    kind: str
    actor: str
    subject: str | None
    details: dict[str, Any]
    created_at: datetime
    leaf_index: int | None


def messages(session: Session) -> list[MessageRow]:
    stmt = select(
        Message.id,
        Message.sender,
        Message.mid,
        Message.routing,
        Message.event_id,
        Message.envelope_sha256,
    )
    return [
        MessageRow(id_, sender, str(mid), tuple(routing.get("recipients", ())), event, digest)
        for id_, sender, mid, routing, event, digest in session.execute(stmt)
    ]


def deliveries(session: Session) -> list[DeliveryRow]:
    stmt = select(
        Delivery.message_id,
        Delivery.recipient,
        Delivery.state,
        Delivery.inbox_seq,
        Delivery.fetched_at,
        Delivery.acked_at,
        Delivery.ack_sha256,
    )
    return [DeliveryRow(*row) for row in session.execute(stmt)]


def flow_events(session: Session) -> list[EventRow]:
    """The audit events of the message flow (accepted, rejected, delivered, fetched, acked)."""
    stmt = select(
        AuditEvent.id,
        AuditEvent.kind,
        AuditEvent.actor,
        AuditEvent.subject,
        AuditEvent.details,
        AuditEvent.created_at,
        AuditEvent.leaf_index,
    ).where(AuditEvent.kind.in_(FLOW_KINDS))
    return [EventRow(*row) for row in session.execute(stmt)]


def event_indexes(session: Session) -> list[tuple[uuid.UUID, int | None]]:
    """Every audit event's id and leaf index (null until sequenced)."""
    return [(i, n) for i, n in session.execute(select(AuditEvent.id, AuditEvent.leaf_index))]


def events_by_id(session: Session, ids: Sequence[uuid.UUID]) -> list[EventRow]:
    stmt = select(
        AuditEvent.id,
        AuditEvent.kind,
        AuditEvent.actor,
        AuditEvent.subject,
        AuditEvent.details,
        AuditEvent.created_at,
        AuditEvent.leaf_index,
    )
    out: list[EventRow] = []
    for i in range(0, len(ids), 4000):
        rows = session.execute(stmt.where(AuditEvent.id.in_(ids[i : i + 4000])))
        out += [EventRow(*row) for row in rows]
    return out


def leaves(session: Session) -> list[tuple[int, uuid.UUID, bytes]]:
    """(index, event id, leaf bytes) of every stored leaf, in index order."""
    stmt = select(LogLeaf.index, LogLeaf.event_id, LogLeaf.leaf_bytes).order_by(LogLeaf.index)
    return [(i, e, bytes(b)) for i, e, b in session.execute(stmt)]


def latest_checkpoint_size(session: Session) -> int | None:
    return session.scalar(select(func.max(Checkpoint.size)))


def outbox_counts(session: Session) -> dict[str, int]:
    """Pending and dead-lettered `deliver` rows (the relay's work; push is optional and slow)."""
    pending = session.scalar(
        select(func.count())
        .select_from(Outbox)
        .where(Outbox.topic == "deliver", Outbox.done_at.is_(None), Outbox.dead_at.is_(None))
    )
    dead = session.scalar(
        select(func.count()).select_from(Outbox).where(Outbox.dead_at.is_not(None))
    )
    return {"pending": int(pending or 0), "dead": int(dead or 0)}
