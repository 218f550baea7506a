"""Read-only queries for the invariant checker: one consistent snapshot of the record."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, ScalarSelect, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit.models import AuditEvent, LogLeaf
from broker.audit.service import NewEvent
from broker.db import Base
from broker.messages.models import Delivery, Message, Outbox

# The message-flow actions that each have exactly one audit event.
FLOW_KINDS = ("msg.accepted", "msg.rejected", "msg.delivered", "msg.fetched", "msg.acked")


async def snapshot(session: AsyncSession) -> None:
    """Read everything that follows from one snapshot.

    PostgreSQL: a REPEATABLE READ, read-only transaction (an isolation level SQLite does not
    have; its transaction, taken with BEGIN IMMEDIATE, is one snapshot already).
    """
    if db.dialect_name() == "postgresql" and not session.in_transaction():
        await session.connection(
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


@dataclass(frozen=True)
class EventRow(NewEvent):
    """A stored audit event, with its leaf once sequenced."""

    leaf_index: int | None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the relay and the sequencer still owe, and what the relay gave up on."""

    queued_deliveries: int
    pending_outbox: int
    unsequenced_events: int
    dead_outbox: int

    def pending(self) -> dict[str, int]:
        """The work still in flight (all zero when settled)."""
        return {
            "queued_deliveries": self.queued_deliveries,
            "pending_outbox": self.pending_outbox,
            "unsequenced_events": self.unsequenced_events,
        }


async def messages(session: AsyncSession) -> list[MessageRow]:
    """Every stored message, with its routed recipients."""
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
        for id_, sender, mid, routing, event, digest in await session.execute(stmt)
    ]


async def deliveries(session: AsyncSession) -> list[DeliveryRow]:
    """Every inbox entry (queued ones too)."""
    stmt = select(
        Delivery.message_id,
        Delivery.recipient,
        Delivery.state,
        Delivery.inbox_seq,
        Delivery.fetched_at,
        Delivery.acked_at,
        Delivery.ack_sha256,
    )
    return [DeliveryRow(*row) for row in await session.execute(stmt)]


async def events(session: AsyncSession) -> list[EventRow]:
    """Every audit event (sequenced or not)."""
    stmt = select(
        AuditEvent.id,
        AuditEvent.kind,
        AuditEvent.actor,
        AuditEvent.subject,
        AuditEvent.details,
        AuditEvent.created_at,
        AuditEvent.leaf_index,
    )
    return [EventRow(*row) for row in await session.execute(stmt)]


async def leaves(session: AsyncSession) -> list[tuple[int, uuid.UUID, bytes]]:
    """(index, event id, leaf bytes) of every stored leaf, in index order."""
    stmt = select(LogLeaf.index, LogLeaf.event_id, LogLeaf.leaf_bytes).order_by(LogLeaf.index)
    return [(i, e, bytes(b)) for i, e, b in await session.execute(stmt)]


async def backlog(session: AsyncSession) -> Backlog:
    """Queued deliveries, pending and dead `deliver` outbox rows, unsequenced events: one read.

    Only `deliver` rows are the relay's work; push is optional and slow.
    """

    def count(model: type[Base], *where: ColumnElement[bool]) -> ScalarSelect[int]:
        return select(func.count()).select_from(model).where(*where).scalar_subquery()

    stmt = select(
        count(Delivery, Delivery.state == "queued"),
        count(
            Outbox, Outbox.topic == "deliver", Outbox.done_at.is_(None), Outbox.dead_at.is_(None)
        ),
        count(AuditEvent, AuditEvent.leaf_index.is_(None)),
        count(Outbox, Outbox.dead_at.is_not(None)),
    )
    queued, outbox, unsequenced, dead = (await session.execute(stmt)).one()
    return Backlog(int(queued), int(outbox), int(unsequenced), int(dead))
