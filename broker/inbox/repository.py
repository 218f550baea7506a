"""Queries for the outbox, delivery relay, inbox pages, acknowledgements and their gauges.

Poll and acknowledgement are the hot paths: Core statements over columns, no ORM unit of work.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from broker import db
from broker.agencies.models import Agency
from broker.audit.models import AuditEvent
from broker.messages.models import Delivery, InboxCounter, Message, Outbox
from broker.push.models import PushAttempt, PushEndpoint


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pending outbox row held (row-locked) by this transaction."""

    id: int
    ref: uuid.UUID
    attempts: int
    created_at: datetime


def _pending() -> list[Any]:
    return [Outbox.done_at.is_(None), Outbox.dead_at.is_(None)]


_CLAIMED = select(Outbox.id, Outbox.ref, Outbox.attempts, Outbox.created_at)


async def claim_outbox(
    session: AsyncSession, topic: str, limit: int, now: datetime
) -> list[Claimed]:
    """Due pending rows of a topic, oldest first, locked so concurrent relays take others."""
    stmt = (
        _CLAIMED.where(
            Outbox.topic == topic,
            *_pending(),
            or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= now),
        )
        .order_by(Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [Claimed(*row) for row in await session.execute(stmt)]


async def claim_outbox_ids(session: AsyncSession, ids: Sequence[int]) -> list[Claimed]:
    """These rows if still pending and not held by another transaction (their lease is ours)."""
    if not ids:
        return []
    stmt = (
        _CLAIMED.where(Outbox.id.in_(ids), *_pending())
        .order_by(Outbox.id)
        .with_for_update(skip_locked=True)
    )
    return [Claimed(*row) for row in await session.execute(stmt)]


async def lease_outbox(session: AsyncSession, ids: Sequence[int], until: datetime) -> None:
    """Count an attempt before it is made (it survives a crash) and hold the rows until then."""
    if ids:
        await session.execute(
            update(Outbox)
            .where(Outbox.id.in_(ids))
            .values(attempts=Outbox.attempts + 1, next_attempt_at=until)
        )


async def retry_outbox_at(
    session: AsyncSession, ids: Sequence[int], when: datetime, error: str, *, count: bool
) -> None:
    """Schedule the next try (and count this one, unless its lease already did)."""
    if ids:
        values: dict[str, Any] = {"next_attempt_at": when, "last_error": error[:200]}
        if count:
            values["attempts"] = Outbox.attempts + 1
        await session.execute(
            update(Outbox).where(Outbox.id.in_(ids), *_pending()).values(**values)
        )


async def dead_letter(session: AsyncSession, ids: Sequence[int], now: datetime, error: str) -> None:
    """Stop retrying: kept for an operator (never deleted), out of every claim."""
    if ids:
        await session.execute(
            update(Outbox)
            .where(Outbox.id.in_(ids), *_pending())
            .values(dead_at=now, last_error=error[:200])
        )


async def mark_outbox_done(session: AsyncSession, ids: Sequence[int], now: datetime) -> None:
    if ids:
        await session.execute(update(Outbox).where(Outbox.id.in_(ids)).values(done_at=now))


async def add_outbox(
    session: AsyncSession, topic: str, refs: Sequence[uuid.UUID], now: datetime
) -> None:
    if refs:
        await session.execute(
            insert(Outbox), [{"topic": topic, "ref": ref, "created_at": now} for ref in refs]
        )


async def outbox_rows(session: AsyncSession, topic: str | None = None) -> Sequence[Outbox]:
    stmt = select(Outbox).order_by(Outbox.id)
    if topic is not None:
        stmt = stmt.where(Outbox.topic == topic)
    return (await session.scalars(stmt)).all()


async def queued_deliveries(
    session: AsyncSession, message_ids: Sequence[uuid.UUID]
) -> Sequence[Any]:
    """The still-queued deliveries of these messages, row-locked.

    The lock makes a second relay of the same message (a duplicate row, a re-armed dead
    letter) wait and then find nothing queued, instead of taking inbox numbers it cannot use.
    `push` says whether the recipient wants the delivery pushed too.
    """
    result = await session.execute(
        select(
            Delivery.id,
            Delivery.recipient,
            Message.mid,
            Message.sender,
            Message.received_at,
            Message.exp,
            PushEndpoint.enabled.is_(True).label("push"),
        )
        .join(Message, Message.id == Delivery.message_id)
        .outerjoin(PushEndpoint, PushEndpoint.agency_id == Delivery.recipient)
        .where(Delivery.message_id.in_(message_ids), Delivery.state == "queued")
        .order_by(Message.received_at, Message.id, Delivery.recipient)
        .with_for_update(of=Delivery)
    )
    return result.all()


async def recipient_statuses(session: AsyncSession, agencies: Sequence[str]) -> dict[str, str]:
    """The recipients' statuses, their rows locked in id order (FOR NO KEY UPDATE).

    The lock orders a relay and a reactivation of the same agency (`agencies.service`): the
    reactivation's update waits for a relay that read "suspended" and then sees the deliveries
    it held; a relay that waits for the reactivation reads "active". NO KEY UPDATE leaves the
    foreign-key checks of concurrent submissions (KEY SHARE) unblocked; taken before the inbox
    counters, in the same order, it adds no deadlock.
    """
    if not agencies:
        return {}
    rows = await session.execute(
        select(Agency.id, Agency.status)
        .where(Agency.id.in_(sorted(set(agencies))))
        .order_by(Agency.id)
        .with_for_update(key_share=True)
    )
    return {agency_id: status for agency_id, status in rows}


async def take_seqs(session: AsyncSession, agency: str, count: int) -> int:
    """Reserve `count` inbox numbers; returns the first.

    One upsert: it creates the agency's counter row or takes its row lock, like an UPDATE, so
    a concurrent delivery to the same inbox waits until this transaction has committed.
    """
    stmt = (
        db.insert_for(InboxCounter)
        .values(agency_id=agency, next_seq=1 + count)
        .on_conflict_do_update(
            index_elements=[InboxCounter.agency_id],
            set_={"next_seq": InboxCounter.next_seq + count},
        )
        .returning(InboxCounter.next_seq)
    )
    end = (await session.execute(stmt)).scalar_one()
    return int(end) - count


_DELIVERIES = cast(Table, Delivery.__table__)
_MAKE_AVAILABLE = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"), _DELIVERIES.c.state == "queued")
    .values(state="available", inbox_seq=bindparam("b_seq"), available_at=bindparam("b_at"))
)


async def make_available(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Queued deliveries become available with their inbox numbers (one executemany)."""
    if rows:
        await session.execute(
            _MAKE_AVAILABLE,
            [{"b_id": r["id"], "b_seq": r["seq"], "b_at": r["at"]} for r in rows],
        )


# --- expiry ---------------------------------------------------------------------------------

# Withdrawn by the expiry job: never fetched, and now never will be.
UNFETCHED = ("queued", "available")


def servable(now: datetime) -> Any:
    """A delivery the inbox may serve at `now`: one already fetched (the recipient holds it),
    or one whose message's `exp` has not passed; never an expired, recalled or purged one."""
    return and_(
        Message.purged_at.is_(None),
        or_(
            Delivery.state.in_(("fetched", "acknowledged")),
            and_(Delivery.state.in_(UNFETCHED), Message.exp > int(now.timestamp())),
        ),
    )


async def expire_due(
    session: AsyncSession, cutoff: datetime, now: datetime, limit: int
) -> Sequence[Any]:
    """Withdraw up to `limit` unfetched deliveries of messages whose `exp` is at or before
    `cutoff`: state `expired`; returns (recipient, mid, sender, exp) of each.

    Rows are locked and taken SKIP LOCKED, so two expiry runs never take one delivery twice,
    and the state guard keeps a first fetch that committed in between.
    """
    due = (
        select(Delivery.id)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.state.in_(UNFETCHED), Message.exp <= int(cutoff.timestamp()))
        .order_by(Delivery.id)
        .limit(limit)
        .with_for_update(of=Delivery, skip_locked=True)
    )
    ids = list(await session.scalars(due))
    if not ids:
        return []
    changed = list(
        await session.scalars(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.state.in_(UNFETCHED))
            .values(state="expired", expired_at=now)
            .returning(Delivery.id)
        )
    )
    return await expired_rows(session, changed)


async def expired_rows(session: AsyncSession, delivery_ids: Sequence[uuid.UUID]) -> Sequence[Any]:
    """(recipient, mid, sender, exp) of these deliveries, for their `msg.expired` events."""
    if not delivery_ids:
        return []
    result = await session.execute(
        select(Delivery.recipient, Message.mid, Message.sender, Message.exp)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.id.in_(delivery_ids))
        .order_by(Delivery.recipient, Message.mid)
    )
    return result.all()


async def expire_now(
    session: AsyncSession, delivery_ids: Sequence[uuid.UUID], now: datetime
) -> None:
    """Queued deliveries whose message expired before the relay reached them (one UPDATE)."""
    if delivery_ids:
        await session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.state == "queued")
            .values(state="expired", expired_at=now)
        )


# --- polling --------------------------------------------------------------------------------


# An inbox item after its delivery's id and inbox_seq: the message and its log index.
_ITEM = (
    Message.mid,
    Message.sender,
    Message.kind,
    Message.envelope,
    Message.receipt,
    Message.envelope_sha256,
    Message.received_at,
    AuditEvent.leaf_index,
)


def items(*columns: Any) -> Select[*tuple[Any, ...]]:
    """Inbox items as the inbox and push serve them (delivery, message, log index) + `columns`."""
    return (
        select(Delivery.id, Delivery.inbox_seq, *_ITEM, *columns)
        .join(Message, Message.id == Delivery.message_id)
        .join(AuditEvent, AuditEvent.id == Message.event_id)
    )


class _octet_length(FunctionElement[int]):
    """A text value's size in bytes. PostgreSQL's `octet_length` reads it from the value's
    header, even for an envelope stored out of line, where `length` (characters) would fetch
    and decode it; SQLite (before 3.43) has only `length`. Envelopes are ASCII (compact JWS),
    so both count bytes."""

    type = Integer()
    inherit_cache = True


@compiles(_octet_length)
def _length(element: _octet_length, compiler: Any, **kw: Any) -> str:
    return f"length({compiler.process(element.clauses, **kw)})"


@compiles(_octet_length, "postgresql")
def _octet_length_pg(element: _octet_length, compiler: Any, **kw: Any) -> str:
    return f"octet_length({compiler.process(element.clauses, **kw)})"


@dataclass(frozen=True, slots=True)
class Page:
    """A page's rows, whether another item is waiting after them, and the cursor past them."""

    rows: Sequence[Any]
    more: bool
    cursor: int


async def page(
    session: AsyncSession, agency: str, after: int, limit: int, max_bytes: int, now: datetime
) -> Page:
    """The inbox items after `after`: the urgent copies not yet fetched, then the others,
    each in inbox order.

    One statement. Each lane takes its next `limit + 1` deliveries (a partial index finds the
    urgent ones without reading the backlog); they are numbered, urgent lane first, and their
    envelopes' sizes added up without reading an envelope. The page is the first `limit` that
    fit in `max_bytes` (the first always); the outer query reads the message, envelope
    included, only of those. `cursor` is just below the first delivery left out (`stop`), so
    the page holds every delivery between `after` and it; an urgent copy served beyond it
    comes again, fetched, when the cursor reaches it. More is waiting when the lanes `found`
    more than the page holds. A delivery that is not `servable` (its message expired before
    a fetch) is passed over: it never will be.
    """
    waiting_urgent = and_(Delivery.urgent.is_(True), Delivery.state == "available")
    lanes = [
        select(
            Delivery.id,
            Delivery.inbox_seq,
            Delivery.message_id,
            Delivery.state,
            Delivery.available_at,
            _octet_length(Message.envelope).label("size"),
            literal(lane, Integer()).label("lane"),
        )
        .join(Message, Message.id == Delivery.message_id)
        .where(
            Delivery.recipient == agency,
            Delivery.inbox_seq > after,
            servable(now),
            waiting_urgent if lane == 0 else not_(waiting_urgent),
        )
        .order_by(Delivery.inbox_seq)
        .limit(limit + 1)
        .subquery(f"lane{lane}")
        for lane in (0, 1)
    ]
    ahead = union_all(*(select(lane) for lane in lanes)).subquery("ahead")
    order = (ahead.c.lane, ahead.c.inbox_seq)
    ranked = select(
        ahead,
        func.row_number().over(order_by=order).label("n"),
        func.sum(ahead.c.size).over(order_by=order, rows=(None, 0)).label("running"),
        func.count().over().label("found"),
    ).subquery("ranked")
    fits = and_(
        ranked.c.n <= limit,
        or_(ranked.c.n == 1, ranked.c.running <= literal(max_bytes, BigInteger())),
    )
    flagged = select(
        ranked,
        fits.label("fits"),
        func.min(case((not_(fits), ranked.c.inbox_seq))).over().label("stop"),
    ).subquery("flagged")
    result = await session.execute(
        select(
            flagged.c.id,
            flagged.c.inbox_seq,
            *_ITEM,
            flagged.c.state,
            flagged.c.available_at,
            flagged.c.found,
            flagged.c.stop,
        )
        .select_from(flagged)
        .join(Message, Message.id == flagged.c.message_id)
        .join(AuditEvent, AuditEvent.id == Message.event_id)
        .where(flagged.c.fits)
        .order_by(flagged.c.lane, flagged.c.inbox_seq)
    )
    rows = result.all()
    if not rows:
        return Page(rows, False, after)
    stop = rows[0].stop
    cursor = stop - 1 if stop is not None else max(r.inbox_seq for r in rows)
    return Page(rows, rows[0].found > len(rows), cursor)


async def mark_fetched(
    session: AsyncSession, delivery_ids: Sequence[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """First fetch only: returns the deliveries that changed state now (one statement).

    The rows are locked in id order by the sub-select first, so two pollers of one inbox
    marking overlapping pages queue behind each other instead of deadlocking; the state guard
    makes the loser a no-op.
    """
    if not delivery_ids:
        return []
    locked = (
        select(Delivery.id)
        .where(Delivery.id.in_(delivery_ids), Delivery.state == "available")
        .order_by(Delivery.id)
        .with_for_update()
    )
    changed = await session.scalars(
        update(Delivery)
        .where(Delivery.id.in_(locked), Delivery.state == "available")
        .values(state="fetched", fetched_at=now)
        .returning(Delivery.id)
    )
    return list(changed)


async def withdrawn(session: AsyncSession, delivery_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Those of these deliveries withdrawn meanwhile (recalled, or expired) and never fetched."""
    if not delivery_ids:
        return set()
    found = await session.scalars(
        select(Delivery.id).where(
            Delivery.id.in_(delivery_ids), Delivery.state.in_(("recalled", "expired"))
        )
    )
    return set(found)


# --- acknowledgements -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckedDelivery:
    """What an acknowledgement reads of its delivery and message."""

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
    state: str
    purged_at: datetime | None


async def delivery_for_ack(
    session: AsyncSession, recipient: str, mid: uuid.UUID, envelope_sha256: str
) -> AckedDelivery | None:
    """The recipient's delivery of that message and envelope, its row locked (FOR UPDATE)."""
    row = (
        await session.execute(
            select(
                Delivery.id,
                Delivery.inbox_seq,
                Delivery.recipient,
                Delivery.ack_status,
                Delivery.ack_reason,
                Delivery.ack_sha256,
                Delivery.acked_at,
                Message.mid,
                Message.sender,
                Message.agreement_id,
                Message.received_at,
                Delivery.state,
                Message.purged_at,
            )
            .join(Message, Message.id == Delivery.message_id)
            .where(
                Delivery.recipient == recipient,
                Message.mid == mid,
                Message.envelope_sha256 == envelope_sha256,
            )
            .with_for_update(of=Delivery)
        )
    ).first()
    return None if row is None else AckedDelivery(**row._asdict())


async def record_ack(
    session: AsyncSession,
    delivery_id: uuid.UUID,
    now: datetime,
    status: str,
    reason: str | None,
    ack: str,
    ack_sha256: str,
) -> None:
    """The delivery acknowledged (first fetch too, if it was never fetched)."""
    await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(
            state="acknowledged",
            acked_at=now,
            ack_status=status,
            ack_reason=reason,
            ack=ack,
            ack_sha256=ack_sha256,
            fetched_at=func.coalesce(Delivery.fetched_at, literal(now, Delivery.fetched_at.type)),
        )
    )


# --- gauges (read at scrape time) -----------------------------------------------------------


async def outbox_stats(session: AsyncSession) -> Sequence[Any]:
    """Per topic: pending rows, of which retried, dead letters, and the oldest pending time."""
    pending = Outbox.dead_at.is_(None)
    result = await session.execute(
        select(
            Outbox.topic,
            func.count().filter(pending),
            func.count().filter(pending, Outbox.attempts > 0),
            func.count().filter(Outbox.dead_at.is_not(None)),
            func.min(Outbox.created_at).filter(pending),
        )
        .where(Outbox.done_at.is_(None))
        .group_by(Outbox.topic)
    )
    return result.all()


async def push_attempt_counts(session: AsyncSession) -> dict[str, int]:
    """Push attempts by outcome (`sending`, `delivered`, `retry`, ...)."""
    rows = await session.execute(
        select(PushAttempt.status, func.count()).group_by(PushAttempt.status)
    )
    return {status: int(count) for status, count in rows}


async def unacknowledged_since(
    session: AsyncSession, agreement_id: str, received_before: datetime, *, urgent: bool
) -> Sequence[Any]:
    """(recipient, count) of deliveries (urgent, or not) not acknowledged, for messages
    received before then."""
    result = await session.execute(
        select(Delivery.recipient, func.count())
        .join(Message, Message.id == Delivery.message_id)
        .where(
            Message.agreement_id == agreement_id,
            Delivery.urgent.is_(urgent),
            Message.received_at < received_before,
            Delivery.acked_at.is_(None),
            Delivery.state != "expired",  # withdrawn unread: nothing to acknowledge
        )
        .group_by(Delivery.recipient)
    )
    return result.all()
