"""Queries for the outbox, delivery relay, inbox pages, acknowledgements and their gauges."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent
from broker.messages.models import Delivery, InboxCounter, Message, Outbox
from broker.push.models import PushEndpoint


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pending outbox row held (row-locked) by this transaction."""

    id: int
    ref: uuid.UUID
    attempts: int
    created_at: datetime


def _pending() -> list[Any]:
    return [Outbox.done_at.is_(None), Outbox.dead_at.is_(None)]


def claim_outbox(session: Session, topic: str, limit: int, now: datetime) -> list[Claimed]:
    """Due pending rows of a topic, oldest first, locked so concurrent relays take others."""
    stmt = (
        select(Outbox.id, Outbox.ref, Outbox.attempts, Outbox.created_at)
        .where(
            Outbox.topic == topic,
            *_pending(),
            or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= now),
        )
        .order_by(Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [Claimed(*row) for row in session.execute(stmt)]


def claim_outbox_ids(session: Session, ids: Sequence[int]) -> list[Claimed]:
    """These rows if still pending and not held by another transaction (their lease is ours)."""
    if not ids:
        return []
    stmt = (
        select(Outbox.id, Outbox.ref, Outbox.attempts, Outbox.created_at)
        .where(Outbox.id.in_(ids), *_pending())
        .order_by(Outbox.id)
        .with_for_update(skip_locked=True)
    )
    return [Claimed(*row) for row in session.execute(stmt)]


def lease_outbox(session: Session, ids: Sequence[int], until: datetime) -> None:
    """Count an attempt before it is made (it survives a crash) and hold the rows until then."""
    if ids:
        session.execute(
            update(Outbox)
            .where(Outbox.id.in_(ids))
            .values(attempts=Outbox.attempts + 1, next_attempt_at=until)
        )


def retry_outbox_at(
    session: Session, ids: Sequence[int], when: datetime, error: str, *, count: bool
) -> None:
    """Schedule the next try (and count this one, unless its lease already did)."""
    if ids:
        values: dict[str, Any] = {"next_attempt_at": when, "last_error": error[:200]}
        if count:
            values["attempts"] = Outbox.attempts + 1
        session.execute(update(Outbox).where(Outbox.id.in_(ids), *_pending()).values(**values))


def dead_letter(session: Session, ids: Sequence[int], now: datetime, error: str) -> None:
    """Stop retrying: kept for an operator (never deleted), out of every claim."""
    if ids:
        session.execute(
            update(Outbox)
            .where(Outbox.id.in_(ids), *_pending())
            .values(dead_at=now, last_error=error[:200])
        )


def mark_outbox_done(session: Session, ids: Sequence[int], now: datetime) -> None:
    if ids:
        session.execute(update(Outbox).where(Outbox.id.in_(ids)).values(done_at=now))


def add_outbox(session: Session, topic: str, refs: Sequence[uuid.UUID], now: datetime) -> None:
    if refs:
        session.execute(
            insert(Outbox), [{"topic": topic, "ref": ref, "created_at": now} for ref in refs]
        )


def outbox_rows(session: Session, topic: str | None = None) -> Sequence[Outbox]:
    stmt = select(Outbox).order_by(Outbox.id)
    if topic is not None:
        stmt = stmt.where(Outbox.topic == topic)
    return session.scalars(stmt).all()


def queued_deliveries(session: Session, message_ids: Sequence[uuid.UUID]) -> Sequence[Any]:
    """The still-queued deliveries of these messages, row-locked.

    The lock makes a second relay of the same message (a duplicate row, a re-armed dead
    letter) wait and then find nothing queued, instead of taking inbox numbers it cannot use.
    `push` says whether the recipient wants the delivery pushed too.
    """
    return session.execute(
        select(
            Delivery.id,
            Delivery.recipient,
            Message.mid,
            Message.sender,
            Message.received_at,
            PushEndpoint.enabled.is_(True).label("push"),
        )
        .join(Message, Message.id == Delivery.message_id)
        .outerjoin(PushEndpoint, PushEndpoint.agency_id == Delivery.recipient)
        .where(Delivery.message_id.in_(message_ids), Delivery.state == "queued")
        .order_by(Message.received_at, Message.id, Delivery.recipient)
        .with_for_update(of=Delivery)
    ).all()


def take_seqs(session: Session, agency: str, count: int) -> int:
    """Reserve `count` inbox numbers; returns the first.

    One upsert: it creates the agency's counter row or takes its row lock, like an UPDATE, so
    a concurrent delivery to the same inbox waits until this transaction has committed.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    stmt = upsert(InboxCounter).values(agency_id=agency, next_seq=1 + count)
    end = session.execute(
        stmt.on_conflict_do_update(
            index_elements=[InboxCounter.agency_id],
            set_={"next_seq": InboxCounter.next_seq + count},
        ).returning(InboxCounter.next_seq)
    ).scalar_one()
    return int(end) - count


def make_available(session: Session, rows: list[dict[str, Any]]) -> None:
    """Queued deliveries become available with their inbox numbers (one executemany)."""
    if not rows:
        return
    table = cast(Table, Delivery.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.state == "queued")
        .values(state="available", inbox_seq=bindparam("b_seq"), available_at=bindparam("b_at"))
    )
    session.execute(stmt, [{"b_id": r["id"], "b_seq": r["seq"], "b_at": r["at"]} for r in rows])


def add_events(session: Session, events: list[dict[str, Any]]) -> None:
    if events:
        session.execute(insert(AuditEvent), events)


def page(session: Session, agency: str, after: int, limit: int) -> Sequence[Any]:
    return session.execute(
        select(
            Delivery.id,
            Delivery.inbox_seq,
            Delivery.state,
            Delivery.available_at,
            Message.mid,
            Message.sender,
            Message.kind,
            Message.envelope,
            Message.receipt,
            Message.envelope_sha256,
            Message.received_at,
            AuditEvent.leaf_index,
        )
        .join(Message, Message.id == Delivery.message_id)
        .join(AuditEvent, AuditEvent.id == Message.event_id)
        .where(Delivery.recipient == agency, Delivery.inbox_seq > after)
        .order_by(Delivery.inbox_seq)
        .limit(limit)
    ).all()


def mark_fetched(
    session: Session, delivery_ids: Sequence[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """First fetch only: returns the deliveries that changed state now.

    Rows are locked in id order first, so two pollers of one inbox marking overlapping pages
    queue behind each other instead of deadlocking; the state guard makes the loser a no-op.
    """
    if not delivery_ids:
        return []
    locked = (
        select(Delivery.id)
        .where(Delivery.id.in_(delivery_ids), Delivery.state == "available")
        .order_by(Delivery.id)
        .with_for_update()
    )
    ids = list(session.scalars(locked))
    if not ids:
        return []
    changed = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.state == "available")
        .values(state="fetched", fetched_at=now)
        .returning(Delivery.id)
    ).scalars()
    return list(changed)


def delivery_with_message(
    session: Session, recipient: str, mid: uuid.UUID, envelope_sha256: str
) -> tuple[Delivery, Message] | None:
    row = session.execute(
        select(Delivery, Message)
        .join(Message, Message.id == Delivery.message_id)
        .where(
            Delivery.recipient == recipient,
            Message.mid == mid,
            Message.envelope_sha256 == envelope_sha256,
        )
        .with_for_update()
    ).first()
    return None if row is None else (row[0], row[1])


# --- the async poll and acknowledgement paths (PostgreSQL, `db.AsyncConn`) -----------------


@dataclass(frozen=True, slots=True)
class AckedDelivery:
    """What an acknowledgement reads of its delivery and message (`acked_delivery_async`)."""

    id: uuid.UUID
    inbox_seq: int | None
    recipient: str
    ack_status: str | None
    ack_reason: str | None
    ack_sha256: str | None
    acked_at: datetime | None
    mid: uuid.UUID
    sender: str
    agreement_id: str
    received_at: datetime


async def acked_delivery_async(
    conn: Any, recipient: str, mid: uuid.UUID, envelope_sha256: str
) -> AckedDelivery | None:
    """`delivery_with_message` on the async connection: the delivery row locked (FOR UPDATE)."""
    cur = await conn.execute(
        "select d.id, d.inbox_seq, d.recipient, d.ack_status, d.ack_reason, d.ack_sha256,"
        " d.acked_at, m.mid, m.sender, m.agreement_id, m.received_at"
        " from deliveries as d join messages as m on m.id = d.message_id"
        " where d.recipient = %(recipient)s and m.mid = %(mid)s"
        " and m.envelope_sha256 = %(sha)s"
        " for update of d",
        {"recipient": recipient, "mid": mid, "sha": envelope_sha256},
    )
    row = await cur.fetchone()
    return None if row is None else AckedDelivery(*row)


async def record_ack_async(
    conn: Any,
    delivery_id: uuid.UUID,
    now: datetime,
    status: str,
    reason: str | None,
    ack: str,
    ack_sha256: str,
) -> None:
    """The delivery acknowledged (first fetch too, if it was never fetched)."""
    await conn.execute(
        "update deliveries set state = 'acknowledged', acked_at = %(now)s,"
        " ack_status = %(status)s, ack_reason = %(reason)s, ack = %(ack)s,"
        " ack_sha256 = %(sha)s, fetched_at = coalesce(fetched_at, %(now)s)"
        " where id = %(id)s",
        {
            "now": now,
            "status": status,
            "reason": reason,
            "ack": ack,
            "sha": ack_sha256,
            "id": delivery_id,
        },
    )


@dataclass(frozen=True, slots=True)
class PageRow:
    """One row of `page_async`: the columns of `page`, under the same names."""

    id: uuid.UUID
    inbox_seq: int
    state: str
    available_at: datetime | None
    mid: uuid.UUID
    sender: str
    kind: str
    envelope: str
    receipt: str
    envelope_sha256: str
    received_at: datetime
    leaf_index: int | None


async def page_async(conn: Any, agency: str, after: int, limit: int) -> list[PageRow]:
    """`page` on the async connection."""
    cur = await conn.execute(
        "select d.id, d.inbox_seq, d.state, d.available_at, m.mid, m.sender, m.kind,"
        " m.envelope, m.receipt, m.envelope_sha256, m.received_at, e.leaf_index"
        " from deliveries as d join messages as m on m.id = d.message_id"
        " join audit_events as e on e.id = m.event_id"
        " where d.recipient = %(agency)s and d.inbox_seq > %(after)s"
        " order by d.inbox_seq limit %(limit)s",
        {"agency": agency, "after": after, "limit": limit},
    )
    return [PageRow(*row) for row in await cur.fetchall()]


async def mark_fetched_async(
    conn: Any, delivery_ids: Sequence[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """`mark_fetched` on the async connection: rows locked in id order, then updated."""
    if not delivery_ids:
        return []
    cur = await conn.execute(
        "with locked as (select id from deliveries"
        " where id = any(%(ids)s) and state = 'available' order by id for update)"
        " update deliveries as d set state = 'fetched', fetched_at = %(now)s"
        " from locked where d.id = locked.id and d.state = 'available' returning d.id",
        {"ids": list(delivery_ids), "now": now},
    )
    return [row[0] for row in await cur.fetchall()]


# --- gauges (read at scrape time) -----------------------------------------------------------


def outbox_stats(session: Session) -> Sequence[Any]:
    """Per topic: pending rows, of which retried, dead letters, and the oldest pending time."""
    pending = Outbox.dead_at.is_(None)
    return session.execute(
        select(
            Outbox.topic,
            func.count().filter(pending),
            func.count().filter(pending, Outbox.attempts > 0),
            func.count().filter(Outbox.dead_at.is_not(None)),
            func.min(Outbox.created_at).filter(pending),
        )
        .where(Outbox.done_at.is_(None))
        .group_by(Outbox.topic)
    ).all()


def unacknowledged_since(
    session: Session, agreement_id: str, received_before: datetime
) -> Sequence[Any]:
    """(recipient, count) of deliveries not acknowledged, for messages received before then."""
    return session.execute(
        select(Delivery.recipient, func.count())
        .join(Message, Message.id == Delivery.message_id)
        .where(
            Message.agreement_id == agreement_id,
            Message.received_at < received_before,
            Delivery.acked_at.is_(None),
        )
        .group_by(Delivery.recipient)
    ).all()
