"""Delivery into inboxes (the outbox relay), cursor polling with long-poll, acknowledgements.

Why the cursor never skips: a delivery gets its inbox number only when it becomes available,
inside the transaction that makes it available, after taking the recipient's counter row lock
(`INSERT INTO inbox_counters ... ON CONFLICT DO UPDATE ... RETURNING`, which locks the row as an
UPDATE does). A second transaction delivering to the same inbox waits
on that lock until the first commits, so numbers become visible in the order they were given:
when a reader sees number n committed, every number below n is already committed. (On SQLite
writers are serialised anyway.) An autoincrement id would not do: ids are drawn at insert time,
and a transaction holding a lower id can commit after one holding a higher id has been read
(tests/inbox/test_cursor.py shows both).

How the relay never loses or doubles a delivery (research 4.1-4.2): the outbox row, the
deliveries and the audit event committed with the message; the relay claims rows with
`FOR UPDATE SKIP LOCKED`, makes the queued deliveries available, records `msg.delivered` and
marks the row done, all in one transaction. A relay that dies mid-batch (kill -9, a lost
connection) commits nothing and the rows stay for the next one; state guards and row locks make
a second relay of the same message a no-op. Celery tasks and wake-ups carry nothing: whichever
relay runs next (a woken task, the beat sweep, the embedded ticker) finds the work in the
database.

Attempts, per outbox row: fresh rows go in one batch transaction, the fast path. A row that
is old (`STALE_S`: a relay failed or died holding it, or none ran) or already failed gets an
attempt counted and a lease in its own committed transaction before it is tried again, so even
a row that kills its worker every time is counted; from its second attempt it is tried alone,
so one poison row cannot hold back the others; after `MAX_RELAY_ATTEMPTS` it is dead-lettered
(kept, visible in the metrics, never deleted). A batch that fails for any other reason than
the database being away is split and retried row by row at once; a lost database connection
just ends the run, since nothing could be recorded anyway, and the next sweep starts over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, jobs, metrics
from broker.audit import service as audit
from broker.auth.service import Caller
from broker.config import settings
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from broker.errors import BrokerError, NotFound
from broker.faults import crash_point
from broker.ids import epoch_ms, utcnow, whole_number
from broker.inbox import notify, repository
from broker.inbox.repository import AckedDelivery, Claimed
from broker.inbox.schemas import AckOut, InboxItem, InboxPage
from broker.logging import get_logger
from broker.messages.models import OUTBOX_DELIVER, OUTBOX_PUSH
from broker.registry import snapshot as registry
from broker.registry.signed import verified_statement
from broker.registry.snapshot import Snapshot

_log = get_logger("broker.inbox")

RELAY_BATCH = 500
MAX_BATCHES_PER_RUN = 20  # then return; the woken task or the next sweep continues
STALE_S = 10.0  # a pending row older than this: a relay failed or died holding it, or none ran
RELAY_LEASE_S = 30.0  # a counted attempt holds its rows this long (then they are due again)
MAX_RELAY_ATTEMPTS = 10
MAX_PAGE = 500
FINAL_ACKS = ("decrypted", "rejected")  # `received` may be followed by one of these, once
MAX_WAIT_S = 30.0


class BadAck(BrokerError, code="ack.invalid"): ...


class AckKeyNotOurs(BrokerError, code="ack.key_not_recipient"): ...


class AckConflict(BrokerError, code="ack.conflict"): ...


class BadCursor(BrokerError, code="inbox.bad_cursor"): ...


# --- the relay ------------------------------------------------------------------------------


def transient(exc: BaseException) -> bool:
    """A database outage or a lost connection: nothing about the rows themselves."""
    if isinstance(exc, OperationalError | InterfaceError):  # failed connects too (db.py)
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with jitter for a relay that failed on a row: 1 s, 2 s, ... 60 s."""
    return timedelta(seconds=min(60.0, 2.0 ** max(attempts - 1, 0)) * random.uniform(0.5, 1.0))  # noqa: S311


async def _deliver(session: AsyncSession, claimed: Sequence[Claimed], now: datetime) -> None:
    """Make the claimed messages' queued deliveries available, record them, settle the rows.

    A delivery to a suspended agency is held: it stays `queued`, without an inbox number or a
    `msg.delivered` event, while the outbox row is settled for the other recipients.
    Reactivating the agency writes a new outbox row per held message, oldest first
    (`agencies.service.reactivate_agency`), so held copies arrive in order, once, numbered
    after what the inbox already holds; one whose `exp` passes meanwhile expires as usual.
    """
    queued = await repository.queued_deliveries(session, [c.ref for c in claimed])
    # A message whose `exp` passed before the relay reached it is never made available.
    late = [row for row in queued if row.exp <= int(now.timestamp())]
    rows = [row for row in queued if row.exp > int(now.timestamp())]
    await repository.expire_now(session, [row.id for row in late], now)
    await _record_expired(session, late)
    status = await repository.recipient_statuses(session, [row.recipient for row in rows])
    rows = [row for row in rows if status.get(row.recipient) == "active"]
    by_recipient: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_recipient[row.recipient].append(row)
    numbered: list[tuple[str, Any, int]] = []
    for recipient in sorted(by_recipient):  # one lock order everywhere: no deadlocks
        items = by_recipient[recipient]
        first = await repository.take_seqs(session, recipient, len(items))
        numbered += [(recipient, row, first + offset) for offset, row in enumerate(items)]
    # A delivery is available from this transaction's commit: stamp it as close to it as we can
    # (the inbox numbers above wait on the recipients' counter locks).
    at = utcnow()
    await repository.make_available(
        session, [{"id": row.id, "seq": seq, "at": at} for _, row, seq in numbered]
    )
    await audit.record_many(
        session,
        [
            audit.event(
                "msg.delivered",
                actor="broker:relay",
                subject=recipient,
                details={
                    "mid": str(row.mid),
                    "sender": row.sender,
                    "recipient": recipient,
                    "delay_ms": epoch_ms(at) - epoch_ms(row.received_at),
                },
                at=at,
            )
            for recipient, row, _ in numbered
        ],
    )
    push_refs = [row.id for row in rows if row.push]
    await repository.add_outbox(session, OUTBOX_PUSH, push_refs, now)
    crash_point("relay.after_seq")
    await repository.mark_outbox_done(session, [c.id for c in claimed], now)
    if by_recipient:
        notify.after_commit(session, by_recipient.keys())
    if push_refs:
        jobs.after_commit(session, jobs.PUSH)


async def relay(session: AsyncSession, *, batch: int = RELAY_BATCH) -> tuple[int, list[list[int]]]:
    """One fast-path pass: deliver the fresh rows of a batch; count and lease the others.

    Returns how many rows it claimed and the groups of leased rows to try next, each in its
    own transaction (`relay_leased`), once this one has committed their attempt.
    """
    now = utcnow()
    claimed = await repository.claim_outbox(session, OUTBOX_DELIVER, batch, now)
    stale = now - timedelta(seconds=STALE_S)
    fresh = [c for c in claimed if c.attempts == 0 and c.created_at > stale]
    suspect = [c for c in claimed if c.attempts > 0 or c.created_at <= stale]
    dead = [c.id for c in suspect if c.attempts >= MAX_RELAY_ATTEMPTS]
    if dead:
        await repository.dead_letter(
            session, dead, now, f"gave up after {MAX_RELAY_ATTEMPTS} attempts"
        )
        _log.error("outbox rows dead-lettered", topic=OUTBOX_DELIVER, ids=dead)
    retry = [c for c in suspect if c.attempts < MAX_RELAY_ATTEMPTS]
    await repository.lease_outbox(
        session, [c.id for c in retry], now + timedelta(seconds=RELAY_LEASE_S)
    )
    if fresh:
        await _deliver(session, fresh, now)
    # A first retry goes as a batch; from the second on, alone (a poison row stays alone).
    groups = [[c.id for c in retry if c.attempts == 0]] + [[c.id] for c in retry if c.attempts]
    return len(claimed), [g for g in groups if g]


async def relay_leased(session_factory: db.SessionFactory, ids: list[int]) -> int:
    """Deliver leased rows (their attempt is already counted); split a failing group."""
    try:
        async with session_factory() as session:
            now = utcnow()
            claimed = await repository.claim_outbox_ids(session, ids)
            if claimed:
                await _deliver(session, claimed, now)
            return len(claimed)
    except Exception as exc:
        if transient(exc):
            raise
        if len(ids) > 1:
            return sum([await relay_leased(session_factory, [i]) for i in ids])
        reason = _describe(exc)
        async with session_factory() as session:
            for row in await repository.claim_outbox_ids(session, ids):
                when = utcnow() + _retry_delay(row.attempts)
                await repository.retry_outbox_at(session, [row.id], when, reason, count=False)
        _log.warning(
            "outbox row failed; retried later", topic=OUTBOX_DELIVER, id=ids[0], error=reason
        )
        return 0


async def relay_all(session_factory: db.SessionFactory) -> int:
    """Drain the outbox, one transaction per batch (the task, the sweep and the ticker)."""
    total = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        held: list[int] = []
        try:
            async with session_factory() as session:
                claimed, groups = await relay(session)
                held = [i for g in groups for i in g]
        except Exception as exc:
            if transient(exc):
                raise
            # The pass rolled back. Count an attempt on each row it held and try them again
            # as leased rows: a failing group is split until the bad row is alone.
            async with session_factory() as session:
                now = utcnow()
                rows = await repository.claim_outbox(session, OUTBOX_DELIVER, RELAY_BATCH, now)
                await repository.lease_outbox(
                    session, [r.id for r in rows], now + timedelta(seconds=RELAY_LEASE_S)
                )
                claimed, groups = len(rows), [[r.id for r in rows]]
            _log.warning("relay batch failed; retrying its rows", error=_describe(exc))
        for group in groups:
            await relay_leased(session_factory, group)
        crash_point("relay.after_commit")
        total += claimed
        if claimed < RELAY_BATCH and not held:
            return total
    jobs.wake(jobs.RELAY)  # more is due: run again soon rather than hold this worker
    return total


def _describe(exc: BaseException) -> str:
    """The error's class and first line (never parameters: SQLAlchemy appends them)."""
    lines = str(getattr(exc, "orig", None) or exc).splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


# --- polling --------------------------------------------------------------------------------


def _cursor(after: str | None) -> int:
    if after is None or after == "":
        return 0
    cursor = whole_number(after)
    if cursor is None:
        raise BadCursor("the cursor is the `next_cursor` of the previous page")
    return cursor


async def poll(session: AsyncSession, caller: Caller, after: str | None, limit: int) -> InboxPage:
    """One page of the caller's inbox after the cursor; records first fetches.

    Three statements at most: the page, the first fetches marked in one UPDATE, and their
    `msg.fetched` events in one INSERT. The page stops at `limit` items or at the envelope
    byte budget (`inbox_page_max_bytes`), whichever comes first; envelopes past it are not
    read, and only the items returned are marked fetched.
    """
    agency = caller.agency_id
    assert agency is not None
    start = _cursor(after)
    now = utcnow()
    found = await repository.page(
        session,
        agency,
        start,
        min(max(limit, 1), MAX_PAGE),
        settings().inbox_page_max_bytes,
        now,
    )
    rows = found.rows
    fetched = set(
        await repository.mark_fetched(session, [r.id for r in rows if r.state == "available"], now)
    )
    # A copy read as available but not marked now was fetched by another poller, or withdrawn
    # (recalled, expired) since the read: that one is not served, so a recall racing this
    # page leaves the recipient without the message, never with it and without the notice.
    lost = [r.id for r in rows if r.state == "available" and r.id not in fetched]
    if lost:
        gone = await repository.withdrawn(session, lost)
        rows = [r for r in rows if r.id not in gone]
    if fetched:
        firsts = [r for r in rows if r.id in fetched]
        await audit.record_many(
            session,
            [
                audit.event(
                    "msg.fetched",
                    actor=caller.actor,
                    subject=agency,
                    details=_fetched_details(row, agency),
                )
                for row in firsts
            ],
        )
        for row in firsts:
            for histogram, value in _fetch_latencies(row, now):
                metrics.observe_after_commit(session, histogram, value)
    return _page(rows, found.cursor, more=found.more)


def _fetched_details(row: Any, agency: str) -> dict[str, Any]:
    return {"mid": str(row.mid), "sender": row.sender, "recipient": agency}


def _fetch_latencies(row: Any, now: datetime) -> list[tuple[Histogram, float]]:
    # Observed at the first fetch, from the database's timestamps, whichever process relayed.
    return [
        (metrics.ACCEPTED_TO_AVAILABLE, (row.available_at - row.received_at).total_seconds()),
        (metrics.AVAILABLE_TO_FETCHED, (now - row.available_at).total_seconds()),
    ]


def _page(rows: Sequence[Any], cursor: int, *, more: bool) -> InboxPage:
    items = [
        InboxItem(
            seq=r.inbox_seq,
            mid=r.mid,
            sender=r.sender,
            kind=r.kind,
            envelope=r.envelope,
            receipt=r.receipt,
            envelope_sha256=r.envelope_sha256,
            received_at=r.received_at,
            log_index=r.leaf_index,
            ahead=r.inbox_seq > cursor,
        )
        for r in rows
    ]
    return InboxPage(items=items, next_cursor=str(cursor), more=more)


@dataclass(frozen=True, slots=True)
class Polled:
    """A page and the wake-up version read before the database read that made it."""

    seen: int
    page: InboxPage


async def poll_seen(session: AsyncSession, caller: Caller, after: str | None, limit: int) -> Polled:
    """`poll`, with the inbox's wake-up version read before it (for `long_poll`'s `first`)."""
    assert caller.agency_id is not None
    seen = notify.board.version(caller.agency_id)
    return Polled(seen, await poll(session, caller, after, limit))


async def long_poll(
    session_factory: db.SessionFactory,
    caller: Caller,
    after: str | None,
    limit: int,
    wait_s: float,
    *,
    first: Polled | None = None,
) -> InboxPage:
    """A page after the cursor; if it is empty, wait up to `wait_s` for a delivery and read again.

    The wait is on the inbox's wake-up (Redis pub/sub, or in-process), never a database loop,
    and holds neither a thread nor a connection. The version is read before each database
    read, so a delivery that commits between the read and the wait ends the wait at once.
    `first`: the caller's own first read (`poll_seen`, in the transaction that authenticated
    it, already committed); each later read is a short transaction of its own.
    """
    agency = caller.agency_id
    assert agency is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(max(wait_s, 0.0), MAX_WAIT_S)
    while True:
        if first is None:
            seen = notify.board.version(agency)
            async with session_factory() as session:
                page = await poll(session, caller, after, limit)
        else:
            seen, page, first = first.seen, first.page, None
        remaining = deadline - loop.time()
        if page.items or remaining <= 0:
            return page
        notify.ensure_listener()
        if not await notify.board.wait_async(agency, seen, remaining):
            return page


# --- acknowledgements -----------------------------------------------------------------------


async def acknowledge(
    session: AsyncSession, caller: Caller, mid: uuid.UUID, ack_jws: str
) -> AckOut:
    """Verify and record the recipient's signed acknowledgement (idempotent).

    Each change is recorded once (`msg.acked`): `received`, then at most one final status
    (`decrypted` or `rejected` with its reason). The same acknowledgement again, or a late
    `received` after the final one, changes nothing and answers with what is recorded; a
    different final status is a conflict. Statements: the locked delivery, its UPDATE and the
    event's INSERT (the registry comes with the token's query).
    """
    agency = caller.agency_id
    assert agency is not None
    snap = await registry.current(session)
    payload = _verified_ack(snap, agency, mid, ack_jws)
    found = await repository.delivery_for_ack(session, agency, mid, payload["envelope_sha256"])
    # Not yet available, withdrawn unread (its `exp`, a recall), or purged: not in the inbox.
    if (
        found is None
        or found.inbox_seq is None
        or found.state in ("expired", "recalled")
        or found.purged_at is not None
    ):
        raise NotFound(f"no message {mid} with that envelope in your inbox")
    digest = sha256_b64u(ack_jws.encode())
    status, reason = payload["status"], payload.get("reason")
    if not _ack_changes(found, mid, status, reason, digest):
        return _ack_out(found)
    now = utcnow()
    if found.acked_at is None:  # the first acknowledgement, whatever its status
        metrics.observe_after_commit(
            session, metrics.ACCEPTED_TO_ACKNOWLEDGED, (now - found.received_at).total_seconds()
        )
    await repository.record_ack(session, found.id, now, status, reason, ack_jws, digest)
    await audit.record(
        session,
        "msg.acked",
        actor=caller.actor,
        subject=agency,
        details=_acked_details(mid, found, agency, digest, status, reason, now),
    )
    return _ack_out(
        dataclasses.replace(
            found, ack_status=status, ack_reason=reason, acked_at=now, ack_sha256=digest
        )
    )


def _verified_ack(snap: Snapshot, agency: str, mid: uuid.UUID, ack_jws: str) -> dict[str, Any]:
    """The acknowledgement's payload, signed by a signing key of `agency`, for `mid`.

    A key of another agency, or none, is `ack.key_not_recipient`; one of the agency's own is
    then held to the same validity as a submit's (revoked, retired, outside its window).
    """
    payload, _ = verified_statement(
        snap,
        ack_jws,
        env.TYP_ACK,
        now=utcnow(),
        agency=agency,
        schema="ack",
        member="ack",
        what="acknowledgement",
        not_signer=AckKeyNotOurs,
        invalid=BadAck,
    )
    if payload["mid"] != str(mid):
        raise BadAck(f"the acknowledgement is for {payload['mid']}, not {mid}")
    return payload


def _ack_changes(
    recorded: AckedDelivery, mid: uuid.UUID, status: str, reason: str | None, digest: str
) -> bool:
    """Whether this acknowledgement is a change to record (AckConflict if it contradicts one)."""
    if recorded.ack_sha256 == digest or (
        recorded.ack_status == status and recorded.ack_reason == reason
    ):
        return False  # the same acknowledgement again: nothing new
    if recorded.ack_status in FINAL_ACKS:
        if status not in FINAL_ACKS:
            return False  # a late `received`: the final one stands
        raise AckConflict(f"{mid} was already acknowledged as {recorded.ack_status}")
    return True


def _acked_details(
    mid: uuid.UUID,
    found: AckedDelivery,
    agency: str,
    digest: str,
    status: str,
    reason: str | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "mid": str(mid),
        "sender": found.sender,
        "recipient": agency,
        "ack_sha256": digest,
        "status": status,
        "reason": reason,
        "agreement": found.agreement_id,
        "delay_ms": epoch_ms(now) - epoch_ms(found.received_at),
    }


def _ack_out(acked: AckedDelivery) -> AckOut:
    # Only ever called with an acknowledgement recorded (or just being recorded).
    assert acked.ack_status is not None
    assert acked.acked_at is not None
    assert acked.ack_sha256 is not None
    return AckOut(
        mid=acked.mid,
        recipient=acked.recipient,
        status=acked.ack_status,
        reason=acked.ack_reason,
        acked_at=acked.acked_at,
        ack_sha256=acked.ack_sha256,
    )


# --- expiry ---------------------------------------------------------------------------------

# How long after a message's `exp` the expiry job withdraws its unfetched copies. Polls stop
# serving it at `exp` itself; the margin lets a page read just before `exp` commit its first
# fetch, so that no copy is both served and reported `expired`.
EXPIRY_GRACE = timedelta(seconds=60)
EXPIRY_BATCH = 500


async def expire(
    session: AsyncSession, *, now: datetime | None = None, batch: int = EXPIRY_BATCH
) -> int:
    """Withdraw one batch of unfetched copies whose message's `exp` has passed (`msg.expired`
    each); returns how many. The job runs it until it returns less than a batch."""
    now = now or utcnow()
    rows = await repository.expire_due(session, now - EXPIRY_GRACE, now, batch)
    await _record_expired(session, rows)
    return len(rows)


async def _record_expired(session: AsyncSession, rows: Sequence[Any]) -> None:
    """One `msg.expired` event per withdrawn copy, on the recipient (metadata only)."""
    if rows:
        await audit.record_many(
            session,
            [
                audit.event(
                    "msg.expired",
                    actor="broker:lifecycle",
                    subject=row.recipient,
                    details={
                        "mid": str(row.mid),
                        "sender": row.sender,
                        "recipient": row.recipient,
                        "exp": row.exp,
                    },
                )
                for row in rows
            ],
        )


async def expire_all(session_factory: db.SessionFactory) -> int:
    """Batches of `expire`, each in its own transaction, until one is not full."""
    return await db.until_short(
        session_factory, functools.partial(expire, batch=EXPIRY_BATCH), EXPIRY_BATCH
    )


# --- deadlines ------------------------------------------------------------------------------


async def overdue(session: AsyncSession, now: datetime | None = None) -> dict[str, int]:
    """Deliveries not acknowledged within their agreement's `ack_deadline` (for urgent
    messages its `ack_deadline_urgent`, when it has one), per recipient.

    The same rule as the `overdue` flag of `GET /v1/messages/{mid}`: the deadline of the
    agreement's current version, counted from the broker's acceptance time.
    """
    from broker.agreements import repository as agreements
    from broker.messages.service import ack_deadline

    now = now or utcnow()
    counts: dict[str, int] = defaultdict(int)
    for version in await agreements.current_versions(session):
        for urgent in (True, False):
            deadline = ack_deadline(version.document, urgent=urgent)
            if deadline is None:
                continue
            for recipient, count in await repository.unacknowledged_since(
                session, version.agreement_id, now - deadline, urgent=urgent
            ):
                counts[recipient] += int(count)
    return dict(counts)
