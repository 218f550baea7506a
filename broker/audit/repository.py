"""Queries on audit events and on the log tables (Core statements on the sequencer's hot path)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Table,
    Text,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit.models import (
    AuditEvent,
    BudgetCount,
    BudgetWindow,
    Checkpoint,
    Cosignature,
    LogLeaf,
    LogNode,
    Witness,
)
from broker.crypto.merkle import NodeKey

# pg_advisory_xact_lock key of the single sequencer ("tlog" in ASCII).
SEQUENCER_LOCK = 0x746C6F67
# pg_try_advisory_xact_lock key of the budget summariser ("tsum").
SUMMARISER_LOCK = 0x7473756D
# Bound parameters per statement stay well under both backends' limit (32766 and 32767).
_KEYS_PER_QUERY = 4000

_leaves = cast(Table, LogLeaf.__table__)
_nodes = cast(Table, LogNode.__table__)
_events = cast(Table, AuditEvent.__table__)
_windows = cast(Table, BudgetWindow.__table__)
_counts = cast(Table, BudgetCount.__table__)
_cosignatures = cast(Table, Cosignature.__table__)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def insert_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert audit event rows in one statement (only `broker.audit.service` calls this)."""
    await session.execute(insert(_events), list(rows))


async def list_events(
    session: AsyncSession,
    *,
    kind: str | None = None,
    subject: str | None = None,
    limit: int = 100,
) -> Sequence[AuditEvent]:
    """Events by kind and subject, in id order (tests and tools)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id)
    if kind is not None:
        stmt = stmt.where(AuditEvent.kind == kind)
    if subject is not None:
        stmt = stmt.where(AuditEvent.subject == subject)
    return (await session.scalars(stmt.limit(limit))).all()


# --- the leaf budget (broker.audit.budget) -------------------------------------------------


async def use_budget(session: AsyncSession, actor: str, window_start: datetime, n: int) -> int:
    """Add `n` to the actor's count of budgeted events in the window; returns the new count.

    One upsert, which takes the row lock as an UPDATE does: a concurrent request of the same
    actor waits until this transaction ends and then counts on from its total.
    """
    stmt = (
        db.insert_for(_windows)
        .values(actor=actor, window_start=window_start, used=n)
        .on_conflict_do_update(
            index_elements=[_windows.c.actor, _windows.c.window_start],
            set_={"used": _windows.c.used + n},
        )
        .returning(_windows.c.used)
    )
    return int((await session.execute(stmt)).scalar_one())


async def count_over_budget(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add events beyond the budget to their (actor, window, kind, code, subject) counts."""
    if not rows:
        return
    stmt = db.insert_for(_counts)
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[_counts.c[k] for k in ("actor", "window_start", "kind", "code", "subject")],
        set_={
            "count": _counts.c["count"] + new["count"],
            # Commits may come out of time order: keep the earliest first and the latest last.
            "first_at": case(
                (new.first_at < _counts.c.first_at, new.first_at), else_=_counts.c.first_at
            ),
            "last_at": case(
                (new.last_at > _counts.c.last_at, new.last_at), else_=_counts.c.last_at
            ),
        },
    )
    await session.execute(stmt, list(rows))


async def lock_summariser(session: AsyncSession) -> bool:
    """Whether this transaction may summarise (one summariser at a time; the others skip)."""
    # PostgreSQL only: SQLite's BEGIN IMMEDIATE already admits one writer at a time.
    if _dialect(session) != "postgresql":
        return True
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(SUMMARISER_LOCK))))


async def take_closed_budgets(
    session: AsyncSession, cutoff: datetime
) -> tuple[list[tuple[Any, ...]], dict[tuple[str, datetime], int]]:
    """Delete and return the counts and window totals of the windows starting at `cutoff` or
    earlier: the counts' rows, and each (actor, window_start)'s number of budgeted events.

    DELETE ... RETURNING, so what is summarised is exactly what is deleted: on PostgreSQL a row
    another transaction is still counting into is waited for and returned as that transaction
    committed it, and a row it inserted, not yet visible, stays for the next run.
    """
    deleted = await session.execute(
        delete(_counts)
        .where(_counts.c.window_start <= cutoff)
        .returning(
            _counts.c.actor,
            _counts.c.window_start,
            _counts.c.kind,
            _counts.c.code,
            _counts.c.subject,
            _counts.c["count"],
            _counts.c.first_at,
            _counts.c.last_at,
        )
    )
    counts = [tuple(row) for row in deleted]
    windows = await session.execute(
        delete(_windows)
        .where(_windows.c.window_start <= cutoff)
        .returning(_windows.c.actor, _windows.c.window_start, _windows.c.used)
    )
    used = {(actor, start): int(n) for actor, start, n in windows}
    return counts, used


# --- the sequencer -------------------------------------------------------------------------


async def lock_sequencer(session: AsyncSession) -> None:
    """Serialise sequencers for the rest of the transaction."""
    # PostgreSQL only: SQLite's BEGIN IMMEDIATE already admits one writer at a time.
    if _dialect(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(SEQUENCER_LOCK)))


async def latest_checkpoint(session: AsyncSession) -> Checkpoint | None:
    """The checkpoint of the largest size."""
    return await session.scalar(select(Checkpoint).order_by(Checkpoint.size.desc()).limit(1))


async def latest_size(session: AsyncSession) -> int | None:
    """The largest signed tree size, or None before the first checkpoint."""
    size = await session.scalar(select(func.max(Checkpoint.size)))
    return None if size is None else int(size)


async def checkpoint(session: AsyncSession, size: int) -> Checkpoint | None:
    """The checkpoint of one size, if one was signed."""
    return await session.get(Checkpoint, size)


async def leaf_count(session: AsyncSession) -> int:
    """One past the highest stored leaf index."""
    top = await session.scalar(select(func.max(_leaves.c["index"])))
    return 0 if top is None else int(top) + 1


async def unsequenced(
    session: AsyncSession, limit: int
) -> Sequence[Row[Any, Any, Any, Any, Any, Any]]:
    """The oldest events without a leaf, in (created_at, id) order; details as JSON text."""
    stmt = (
        select(_events.c.id, _events.c.kind, _events.c.actor, _events.c.subject)
        # Text, not parsed: the sequencer parses once, straight into the leaf document.
        .add_columns(sql_cast(_events.c.details, Text), _events.c.created_at)
        .where(_events.c.leaf_index.is_(None))
        .order_by(_events.c.created_at, _events.c.id)
        .limit(limit)
    )
    return (await session.execute(stmt)).all()


async def get_nodes(session: AsyncSession, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
    """Stored hashes among `keys`: one query (chunked only for thousands of keys)."""
    found: dict[NodeKey, bytes] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _KEYS_PER_QUERY):
        chunk = unique[i : i + _KEYS_PER_QUERY]
        rows = await session.execute(
            select(_nodes.c.level, _nodes.c["index"], _nodes.c.hash).where(
                tuple_(_nodes.c.level, _nodes.c["index"]).in_(chunk)
            )
        )
        for level, index, digest in rows:
            found[(level, index)] = bytes(digest)
    return found


async def insert_leaves(
    session: AsyncSession, rows: Sequence[tuple[int, uuid.UUID, bytes, bytes, datetime]]
) -> None:
    """Bulk insert (index, event_id, leaf_bytes, leaf_hash, ts).

    With RETURNING, SQLAlchemy sends the rows as multi-row INSERTs ("insertmanyvalues"), far
    fewer round trips than the driver's executemany (docs/performance.md, transparency log).
    """
    if not rows:
        return
    keys = [c.name for c in _leaves.columns]
    await session.execute(
        insert(_leaves).returning(_leaves.c.index),
        [dict(zip(keys, row, strict=True)) for row in rows],
    )


async def insert_nodes(session: AsyncSession, nodes: Sequence[tuple[NodeKey, bytes]]) -> None:
    """Bulk insert new node hashes (multi-row INSERTs, as `insert_leaves`)."""
    if not nodes:
        return
    await session.execute(
        insert(_nodes).returning(_nodes.c.level),
        [{"level": lv, "index": i, "hash": h} for (lv, i), h in nodes],
    )


async def mark_sequenced(session: AsyncSession, event_ids: Sequence[uuid.UUID], start: int) -> int:
    """Give the events `event_ids` the leaf indexes start, start + 1, ...; returns how many.

    `event_ids` are in the order `unsequenced` read them, (created_at, id), which one UPDATE
    reproduces with a row number; an event only counts when it got exactly its index, so
    the caller refuses any disagreement. Only events still without an index change: an
    index, once committed, never does.
    """
    if not event_ids:
        return 0
    rank = func.row_number().over(order_by=(_events.c.created_at, _events.c.id))
    numbered = (
        select(_events.c.id, (rank + (start - 1)).label("n"))
        .where(_events.c.id.in_(event_ids))
        .subquery("v")
    )
    changed = await session.execute(
        update(_events)
        .where(_events.c.id == numbered.c.id, _events.c.leaf_index.is_(None))
        .values(leaf_index=numbered.c.n)
        .returning(_events.c.id, _events.c.leaf_index)
    )
    expected = {event_id: start + n for n, event_id in enumerate(event_ids)}
    return sum(expected.get(event_id) == index for event_id, index in changed)


async def add_checkpoint(session: AsyncSession, row: Checkpoint) -> None:
    """Insert now: a second root for a size fails here, on the primary key."""
    session.add(row)
    await session.flush()


# --- witnesses and their cosignatures ------------------------------------------------------


async def witness(session: AsyncSession, name: str) -> Witness | None:
    """The registered witness named `name`."""
    return await session.get(Witness, name)


async def witness_by_vkey(session: AsyncSession, vkey: str) -> Witness | None:
    """The registered witness with this verifier key."""
    return await session.scalar(select(Witness).where(Witness.vkey == vkey))


async def witnesses(session: AsyncSession, agency_id: str | None = None) -> Sequence[Witness]:
    """Registered witnesses (of one agency), by name."""
    stmt = select(Witness).order_by(Witness.name)
    if agency_id is not None:
        stmt = stmt.where(Witness.agency_id == agency_id)
    return (await session.scalars(stmt)).all()


async def add_witness(session: AsyncSession, row: Witness) -> None:
    """Insert now: a second witness of one name fails on the primary key."""
    session.add(row)
    await session.flush()


async def put_cosignature(
    session: AsyncSession, size: int, witness: str, timestamp: int, line: str, at: datetime
) -> bool:
    """Store a witness's line for a checkpoint unless it holds a newer one; whether it changed.

    One upsert: concurrent submissions of one witness keep the newest timestamp whatever
    their order, and a retry of the stored line changes nothing.
    """
    stmt = db.insert_for(_cosignatures).values(
        size=size, witness=witness, timestamp=timestamp, line=line, created_at=at
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[_cosignatures.c.size, _cosignatures.c.witness],
        set_={"timestamp": timestamp, "line": line, "created_at": at},
        where=_cosignatures.c.timestamp < stmt.excluded.timestamp,
    ).returning(_cosignatures.c.size)
    return (await session.execute(stmt)).first() is not None


async def cosignatures(session: AsyncSession, size: int) -> Sequence[Cosignature]:
    """The stored cosignatures of one checkpoint, by witness name."""
    stmt = select(Cosignature).where(Cosignature.size == size).order_by(Cosignature.witness)
    return (await session.scalars(stmt)).all()


async def cosignature(session: AsyncSession, size: int, witness: str) -> Cosignature | None:
    """One witness's stored cosignature of one checkpoint, as stored now."""
    stmt = select(Cosignature).where(Cosignature.size == size, Cosignature.witness == witness)
    return await session.scalar(stmt.execution_options(populate_existing=True))


async def latest_cosigned_size(session: AsyncSession, at_least: int) -> int | None:
    """The largest checkpoint size with at least `at_least` stored cosignatures."""
    stmt = (
        select(_cosignatures.c.size)
        .group_by(_cosignatures.c.size)
        .having(func.count() >= at_least)
        .order_by(_cosignatures.c.size.desc())
        .limit(1)
    )
    size = await session.scalar(stmt)
    return None if size is None else int(size)


# --- who an event names --------------------------------------------------------------------


def names_any(session: AsyncSession, agencies: Collection[str]) -> ColumnElement[bool]:
    """SQL for "the event names one of `agencies`" (same rule as `leaf.agencies_named`).

    Builds a clause and reads nothing: the session only says which dialect to write for.
    """
    ids = sorted(agencies)
    if not ids:
        return false()
    details = AuditEvent.details
    clauses: list[ColumnElement[bool]] = [AuditEvent.subject.in_(ids)]
    clauses += [AuditEvent.subject.startswith(a + "/", autoescape=True) for a in ids]
    clauses += [details[key].as_string().in_(ids) for key in ("sender", "recipient", "agency")]
    # A JSON array's membership test has no common SQL: JSONB's `?|`, SQLite's json_each.
    if _dialect(session) == "postgresql":
        array = postgresql.array([literal(a) for a in ids])
        clauses.append(details["recipients"].op("?|")(array))
    else:
        each = func.json_each(AuditEvent.details, "$.recipients").table_valued("value")
        clauses.append(exists(select(literal(1)).select_from(each).where(each.c.value.in_(ids))))
    return or_(*clauses)


# --- reading the log -----------------------------------------------------------------------


async def leaves(
    session: AsyncSession,
    *,
    start: int,
    end: int,
    limit: int,
    agencies: Collection[str] | None,
) -> list[tuple[int, bytes, bytes]]:
    """Leaves with index in [start, end), at most `limit`; only those naming `agencies` if set."""
    stmt = (
        select(_leaves.c["index"], _leaves.c.leaf_bytes, _leaves.c.leaf_hash)
        .where(_leaves.c["index"] >= start, _leaves.c["index"] < end)
        .order_by(_leaves.c["index"])
        .limit(limit)
    )
    if agencies is not None:
        stmt = stmt.join(_events, _events.c.id == _leaves.c.event_id).where(
            names_any(session, agencies)
        )
    rows = await session.execute(stmt)
    return [(i, bytes(data), bytes(digest)) for i, data, digest in rows]


async def leaves_by_index(session: AsyncSession, indexes: Collection[int]) -> dict[int, bytes]:
    """Leaf bytes of the given indexes."""
    out: dict[int, bytes] = {}
    ordered = sorted(indexes)
    for i in range(0, len(ordered), _KEYS_PER_QUERY):
        rows = await session.execute(
            select(_leaves.c["index"], _leaves.c.leaf_bytes).where(
                _leaves.c["index"].in_(ordered[i : i + _KEYS_PER_QUERY])
            )
        )
        out.update((index, bytes(data)) for index, data in rows)
    return out


async def nodes_range(
    session: AsyncSession, level: int, start: int, end: int
) -> list[tuple[int, bytes]]:
    """Stored nodes of one level with index in [start, end)."""
    rows = await session.execute(
        select(_nodes.c["index"], _nodes.c.hash)
        .where(_nodes.c.level == level, _nodes.c["index"] >= start, _nodes.c["index"] < end)
        .order_by(_nodes.c["index"])
    )
    return [(i, bytes(digest)) for i, digest in rows]


# --- auditor queries -----------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Filters of the auditor's event queries; `visible` is the caller's agency binding."""

    since: datetime | None = None
    until: datetime | None = None
    agency: str | None = None
    agreement: str | None = None
    operation: str | None = None
    kinds: tuple[str, ...] = ()
    reason: str | None = None
    visible: frozenset[str] | None = None


def _where(session: AsyncSession, f: EventFilter) -> list[ColumnElement[bool]]:
    details = AuditEvent.details
    where: list[ColumnElement[bool]] = []
    if f.since is not None:
        where.append(AuditEvent.created_at >= f.since)
    if f.until is not None:
        where.append(AuditEvent.created_at < f.until)
    if f.kinds:
        where.append(AuditEvent.kind.in_(f.kinds))
    if f.agreement is not None:
        where.append(details["agreement"].as_string() == f.agreement)
    if f.operation is not None:
        where.append(details["operation"].as_string() == f.operation)
    if f.reason is not None:
        where.append(details["reason"].as_string() == f.reason)
    if f.agency is not None:
        where.append(names_any(session, [f.agency]))
    if f.visible is not None:
        where.append(names_any(session, f.visible))
    return where


async def events(
    session: AsyncSession, f: EventFilter, *, after: uuid.UUID | None, limit: int
) -> Sequence[AuditEvent]:
    """A keyset page of events in id (UUIDv7, time) order."""
    stmt = select(AuditEvent).where(*_where(session, f)).order_by(AuditEvent.id).limit(limit)
    if after is not None:
        stmt = stmt.where(AuditEvent.id > after)
    return (await session.scalars(stmt)).all()


async def event_details(
    session: AsyncSession, f: EventFilter
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(kind, details) of every matching event, streamed."""
    stmt = select(AuditEvent.kind, AuditEvent.details).where(*_where(session, f))
    result = await session.stream(stmt.execution_options(yield_per=2000))
    async for kind, details in result:
        yield str(kind), details


# --- the auditor's console: a message's events, volume per day, the backlog ---


def _visible(session: AsyncSession, visible: Collection[str] | None) -> list[ColumnElement[bool]]:
    return [] if visible is None else [names_any(session, visible)]


async def message_events(
    session: AsyncSession,
    mid: str,
    *,
    kinds: Sequence[str],
    visible: Collection[str] | None,
    limit: int,
) -> Sequence[AuditEvent]:
    """The events of one message id (`details.mid`), oldest first; `visible` scopes them."""
    stmt = (
        select(AuditEvent)
        .where(
            AuditEvent.kind.in_(kinds),
            AuditEvent.details["mid"].as_string() == mid,
            *_visible(session, visible),
        )
        .order_by(AuditEvent.created_at, AuditEvent.id)
        .limit(limit)
    )
    return (await session.scalars(stmt)).all()


async def purge_events(
    session: AsyncSession, mid: str, *, visible: Collection[str] | None
) -> Sequence[AuditEvent]:
    """The `msg.purged` event whose list names `mid` (a batch lists its messages)."""
    stmt = (
        select(AuditEvent)
        .where(
            AuditEvent.kind == "msg.purged",
            sql_cast(AuditEvent.details, Text).contains(mid),
            *_visible(session, visible),
        )
        .order_by(AuditEvent.created_at, AuditEvent.id)
        .limit(1)
    )
    return (await session.scalars(stmt)).all()


async def kind_times(
    session: AsyncSession,
    *,
    kinds: Sequence[str],
    agreement: str,
    since: datetime,
    visible: Collection[str] | None,
) -> AsyncIterator[tuple[str, datetime]]:
    """(kind, created_at) of the events of `kinds` under an agreement since a time, streamed."""
    stmt = select(AuditEvent.kind, AuditEvent.created_at).where(
        AuditEvent.kind.in_(kinds),
        AuditEvent.details["agreement"].as_string() == agreement,
        AuditEvent.created_at >= since,
        *_visible(session, visible),
    )
    result = await session.stream(stmt.execution_options(yield_per=2000))
    async for kind, at in result:
        yield str(kind), at


async def backlog(session: AsyncSession) -> tuple[int, datetime | None]:
    """How many events await a leaf, and the oldest one's time.

    Few, and found through the partial index on `leaf_index is null`.
    """
    row: Any = (
        await session.execute(
            select(func.count(), func.min(AuditEvent.created_at)).where(
                AuditEvent.leaf_index.is_(None)
            )
        )
    ).one()
    return int(row[0] or 0), row[1]
