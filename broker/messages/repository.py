"""Queries on messages and deliveries; the accepting INSERTs of the submit path.

Statements are written once in SQLAlchemy Core and compiled per dialect. The submit path
writes plain tables (no ORM unit of work) with statements built once at import, so each
execution only binds parameters to a cached compilation.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from broker.audit.models import AuditEvent, LogLeaf
from broker.ids import new_id
from broker.messages.models import OUTBOX_DELIVER, Delivery, Message, Outbox

_messages = cast(Table, Message.__table__)
_deliveries = cast(Table, Delivery.__table__)
_outbox = cast(Table, Outbox.__table__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a replayed submit answers with: the original receipt."""

    mid: uuid.UUID
    receipt: str
    envelope_sha256: str
    received_at: datetime
    event_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class NewMessage:
    """An accepted envelope's `messages` row, as the submit path writes it."""

    id: uuid.UUID
    sender: str
    mid: uuid.UUID
    kind: str
    sender_fp: str
    sender_kid: str
    agreement_id: str
    operation_id: str | None
    offence: str
    handling: str
    routing: dict[str, Any]
    in_reply_to: uuid.UUID | None
    supersedes: uuid.UUID | None
    envelope: str
    envelope_sha256: str
    policy_sha256: str
    receipt: str
    event_id: uuid.UUID
    iat: int
    exp: int
    received_at: datetime

    def values(self) -> dict[str, Any]:
        """The row's column values (shallow: `asdict` would copy the routing header)."""
        return {name: getattr(self, name) for name in _MESSAGE_COLUMNS}


_MESSAGE_COLUMNS = tuple(f.name for f in fields(NewMessage))


# --- replay and idempotency ------------------------------------------------------------------

_FIND = select(
    _messages.c.mid,
    _messages.c.receipt,
    _messages.c.envelope_sha256,
    _messages.c.received_at,
    _messages.c.event_id,
).where(_messages.c.sender == bindparam("sender"), _messages.c.mid == bindparam("mid"))

# PostgreSQL: the advisory lock and `_FIND` in one statement, on one row whether found or not.
_found = _FIND.subquery("m")
_LOCK_AND_FIND = (
    select(
        func.pg_try_advisory_xact_lock(bindparam("lock_key", type_=BigInteger())).label("locked"),
        *_found.c,
    )
    .select_from(select(literal_column("1")).subquery("one"))
    .outerjoin(_found, true())
)


async def accepted(session: AsyncSession, sender: str, mid: uuid.UUID) -> Accepted | None:
    """The receipt fields of the message `(sender, mid)`, if it was accepted."""
    row = (await session.execute(_FIND, {"sender": sender, "mid": mid})).first()
    return None if row is None else Accepted(*row)


async def lock_and_find(
    session: AsyncSession, sender: str, mid: uuid.UUID
) -> tuple[bool, Accepted | None]:
    """Take the `(sender, mid)` lock without waiting, and find the message: one round trip.

    PostgreSQL: a transaction-scoped advisory lock, so that a concurrent submit of the same
    message is told 409 instead of queueing behind this one. The look-up shares the lock's
    statement snapshot, so a submit of the same message that commits in between is caught by
    the unique constraint on insert instead (the caller answers it as a replay). SQLite runs
    one writing transaction at a time (BEGIN IMMEDIATE) and needs no lock.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True, await accepted(session, sender, mid)
    params = {"lock_key": lock_key(sender, mid), "sender": sender, "mid": mid}
    locked, *found = (await session.execute(_LOCK_AND_FIND, params)).one()
    return bool(locked), (None if found[0] is None else Accepted(*found))


def lock_key(sender: str, mid: uuid.UUID) -> int:
    """The advisory lock's 64-bit key for `(sender, mid)`."""
    return int.from_bytes(
        hashlib.sha256(f"{sender}/{mid}".encode()).digest()[:8], "big", signed=True
    )


# --- accepting a message ---------------------------------------------------------------------

_INSERT_MESSAGE = insert(_messages)
_INSERT_DELIVERIES = insert(_deliveries)
_INSERT_OUTBOX = insert(_outbox)


async def add_accepted(
    session: AsyncSession, message: NewMessage, recipients: Sequence[str]
) -> None:
    """The message, one queued delivery per recipient and its outbox row: three statements.

    The deliveries are one executemany (asyncpg pipelines it in one round trip). A second
    `(sender, mid)` raises IntegrityError on the first statement, before anything else.
    """
    at = message.received_at
    await session.execute(_INSERT_MESSAGE, message.values())
    await session.execute(
        _INSERT_DELIVERIES,
        [
            {
                "id": new_id(),
                "message_id": message.id,
                "recipient": recipient,
                "state": "queued",
                "created_at": at,
                "urgent": message.routing["priority"] == "urgent",
            }
            for recipient in recipients
        ],
    )
    await session.execute(
        _INSERT_OUTBOX,
        {"topic": OUTBOX_DELIVER, "ref": message.id, "created_at": at, "attempts": 0},
    )


# --- feedback and status ---------------------------------------------------------------------


async def received_alerts(
    session: AsyncSession, recipient: str, mid: uuid.UUID
) -> list[tuple[str, str]]:
    """(sender, agreement) of the alerts with this mid delivered to `recipient`.

    Feedback names its alert by mid alone; mids are unique per sender, so there may be several.
    """
    rows = await session.execute(
        select(_messages.c.sender, _messages.c.agreement_id)
        .join(_deliveries, _deliveries.c.message_id == _messages.c.id)
        .where(
            _messages.c.mid == mid,
            _deliveries.c.recipient == recipient,
            _messages.c.kind == "alert",
        )
    )
    return [(sender, agreement) for sender, agreement in rows]


async def by_sender_mid(session: AsyncSession, sender: str, mid: uuid.UUID) -> Message | None:
    return await session.scalar(select(Message).where(Message.sender == sender, Message.mid == mid))


async def deliveries_of(session: AsyncSession, message_id: uuid.UUID) -> Sequence[Delivery]:
    return (
        await session.scalars(
            select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.recipient)
        )
    ).all()


async def leaf_index(session: AsyncSession, event_id: uuid.UUID) -> int | None:
    return await session.scalar(select(AuditEvent.leaf_index).where(AuditEvent.id == event_id))


# An acknowledgement's `msg.acked` event is written in the acknowledging transaction, right
# after the delivery row's `acked_at`: it is looked for in this window after it, by kind and
# time (the event index), and matched on the acknowledgement's hash (in its details).
ACK_EVENT_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class AckLeaf:
    """Where the log recorded an acknowledgement: its leaf index, the leaf's time and bytes."""

    leaf_index: int | None
    logged_at: datetime | None
    leaf: bytes | None


async def ack_leaves(session: AsyncSession, deliveries: Sequence[Delivery]) -> dict[str, AckLeaf]:
    """The `msg.acked` event of each delivery's recorded acknowledgement, by its `ack_sha256`.

    One statement for all the deliveries: the events of their recipients in each delivery's
    window, with their leaf (null until the sequencer has given them one).
    """
    acked = [
        (d.recipient, d.acked_at, d.ack_sha256)
        for d in deliveries
        if d.acked_at is not None and d.ack_sha256 is not None
    ]
    if not acked:
        return {}
    windows = [
        and_(
            AuditEvent.subject == recipient,
            AuditEvent.created_at >= at,
            AuditEvent.created_at <= at + ACK_EVENT_WINDOW,
        )
        for recipient, at, _ in acked
    ]
    rows = await session.execute(
        select(AuditEvent.details, AuditEvent.leaf_index, LogLeaf.ts, LogLeaf.leaf_bytes)
        .outerjoin(LogLeaf, LogLeaf.event_id == AuditEvent.id)
        .where(AuditEvent.kind == "msg.acked", or_(*windows))
    )
    wanted = {digest for _, _, digest in acked}
    found: dict[str, AckLeaf] = {}
    for details, leaf_index, ts, leaf in rows:
        digest = (details or {}).get("ack_sha256")
        if isinstance(digest, str) and digest in wanted:
            found[digest] = AckLeaf(leaf_index, ts, leaf)
    return found


async def feedback_to(
    session: AsyncSession, alert_sender: str, mid: uuid.UUID, senders: Sequence[str]
) -> list[tuple[str, uuid.UUID]]:
    """(sender, mid) of the feedback on alert `mid` that `senders` addressed to `alert_sender`.

    Feedback names its alert by mid alone; the delivery to the alert's sender is what makes it
    feedback on this alert (the submit path checked that its sender received it).
    """
    if not senders:
        return []
    rows = await session.execute(
        select(_messages.c.sender, _messages.c.mid)
        .join(_deliveries, _deliveries.c.message_id == _messages.c.id)
        .where(
            _messages.c.kind == "feedback",
            _messages.c.in_reply_to == mid,
            _messages.c.sender.in_(senders),
            _deliveries.c.recipient == alert_sender,
        )
        .order_by(_messages.c.received_at, _messages.c.mid)
    )
    return [(sender, feedback_mid) for sender, feedback_mid in rows]


async def superseded_by(session: AsyncSession, sender: str, mid: uuid.UUID) -> uuid.UUID | None:
    """The mid of the sender's correction of its message `mid`, if any."""
    return await session.scalar(
        select(Message.mid).where(Message.sender == sender, Message.supersedes == mid)
    )


async def unacknowledged(
    session: AsyncSession,
    sender: str,
    agreement_id: str,
    received_before: datetime,
    *,
    urgent: bool,
    limit: int,
) -> Sequence[Any]:
    """The sender's copies (urgent, or not) under an agreement not acknowledged, for messages
    received before then, oldest first: (mid, recipient, routing, received_at)."""
    result = await session.execute(
        select(Message.mid, _deliveries.c.recipient, Message.routing, Message.received_at)
        .join(_deliveries, _deliveries.c.message_id == Message.id)
        .where(
            Message.sender == sender,
            Message.agreement_id == agreement_id,
            Message.kind != "recall",
            Message.received_at < received_before,
            _deliveries.c.urgent.is_(urgent),
            _deliveries.c.acked_at.is_(None),
            _deliveries.c.state.not_in(("expired", "recalled")),
        )
        .order_by(Message.received_at)
        .limit(limit)
    )
    return result.all()
