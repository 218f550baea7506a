"""Queries on audit events and on the log tables (Core statements on the sequencer's hot path)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Table,
    Text,
    bindparam,
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
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent, Checkpoint, LogLeaf, LogNode
from broker.crypto.merkle import NodeKey

# pg_advisory_xact_lock key of the single sequencer ("tlog" in ASCII).
SEQUENCER_LOCK = 0x746C6F67
# Bound parameters per statement stay well under SQLite's limit (32766).
_KEYS_PER_QUERY = 4000

_leaves = cast(Table, LogLeaf.__table__)
_nodes = cast(Table, LogNode.__table__)
_events = cast(Table, AuditEvent.__table__)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def add(session: Session, event: AuditEvent) -> AuditEvent:
    """Add an event to the session (flushed with the caller's transaction)."""
    session.add(event)
    return event


def list_events(
    session: Session, *, kind: str | None = None, subject: str | None = None, limit: int = 100
) -> Sequence[AuditEvent]:
    """Events by kind and subject, in id order (tests and tools)."""
    stmt = select(AuditEvent).order_by(AuditEvent.id)
    if kind is not None:
        stmt = stmt.where(AuditEvent.kind == kind)
    if subject is not None:
        stmt = stmt.where(AuditEvent.subject == subject)
    return session.scalars(stmt.limit(limit)).all()


# --- the sequencer -------------------------------------------------------------------------


def lock_sequencer(session: Session) -> None:
    """Serialise sequencers: a transaction-scoped advisory lock (SQLite: BEGIN IMMEDIATE did)."""
    if _dialect(session) == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(SEQUENCER_LOCK)))


def latest_checkpoint(session: Session) -> Checkpoint | None:
    """The checkpoint of the largest size."""
    return session.scalar(select(Checkpoint).order_by(Checkpoint.size.desc()).limit(1))


def latest_size(session: Session) -> int | None:
    """The largest signed tree size, or None before the first checkpoint."""
    size = session.scalar(select(func.max(Checkpoint.size)))
    return None if size is None else int(size)


def checkpoint(session: Session, size: int) -> Checkpoint | None:
    """The checkpoint of one size, if one was signed."""
    return session.get(Checkpoint, size)


def leaf_count(session: Session) -> int:
    """One past the highest stored leaf index."""
    top = session.scalar(select(func.max(_leaves.c["index"])))
    return 0 if top is None else int(top) + 1


def unsequenced(session: Session, limit: int) -> Sequence[Row[Any, Any, Any, Any, Any, Any]]:
    """The oldest events without a leaf, in (created_at, id) order; details as JSON text."""
    stmt = (
        select(_events.c.id, _events.c.kind, _events.c.actor, _events.c.subject)
        # Text, not parsed: the sequencer parses once, straight into the leaf document.
        .add_columns(sql_cast(_events.c.details, Text), _events.c.created_at)
        .where(_events.c.leaf_index.is_(None))
        .order_by(_events.c.created_at, _events.c.id)
        .limit(limit)
    )
    return session.execute(stmt).all()


def get_nodes(session: Session, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
    """Stored hashes among `keys`: one query (chunked only for thousands of keys)."""
    found: dict[NodeKey, bytes] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _KEYS_PER_QUERY):
        chunk = unique[i : i + _KEYS_PER_QUERY]
        rows = session.execute(
            select(_nodes.c.level, _nodes.c["index"], _nodes.c.hash).where(
                tuple_(_nodes.c.level, _nodes.c["index"]).in_(chunk)
            )
        )
        for level, index, digest in rows:
            found[(level, index)] = bytes(digest)
    return found


def _copy(
    session: Session, table: Table, types: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    # PostgreSQL's COPY (binary) inside the session's transaction: ~9x insertmanyvalues.
    columns = ", ".join(f'"{c.name}"' for c in table.columns)
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with (
        driver.cursor() as cur,
        cur.copy(f"COPY {table.name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def insert_leaves(
    session: Session, rows: Sequence[tuple[int, uuid.UUID, bytes, bytes, datetime]]
) -> None:
    """Bulk insert (index, event_id, leaf_bytes, leaf_hash, ts): COPY, else executemany."""
    if not rows:
        return
    if _dialect(session) == "postgresql":
        _copy(session, _leaves, ("int8", "uuid", "bytea", "bytea", "timestamptz"), rows)
    else:
        keys = [c.name for c in _leaves.columns]
        session.execute(insert(_leaves), [dict(zip(keys, row, strict=True)) for row in rows])


def insert_nodes(session: Session, nodes: Sequence[tuple[NodeKey, bytes]]) -> None:
    """Bulk insert new node hashes: COPY, else executemany."""
    if not nodes:
        return
    if _dialect(session) == "postgresql":
        _copy(session, _nodes, ("int2", "int8", "bytea"), ((lv, i, h) for (lv, i), h in nodes))
    else:
        session.execute(
            insert(_nodes), [{"level": lv, "index": i, "hash": h} for (lv, i), h in nodes]
        )


class Marking:
    """The pending UPDATE of `mark_sequenced`; `count` is the number of events it marked."""

    count = 0


@contextmanager
def mark_sequenced(
    session: Session, event_ids: Sequence[uuid.UUID], start: int
) -> Iterator[Marking]:
    """Give the events `event_ids` the leaf indexes start, start + 1, ...; only unsequenced ones.

    On PostgreSQL the UPDATE is sent in pipeline mode and runs while the caller's block
    computes the leaves (the server and the sequencer work at once); `count` is known when the
    block exits. Elsewhere it runs on entry.
    """
    marking = Marking()
    if not event_ids:
        yield marking
        return
    if _dialect(session) == "postgresql":
        driver = session.connection().connection.driver_connection
        assert driver is not None
        with driver.pipeline(), driver.cursor() as cur:
            cur.execute(_MARK_SQL, (start, list(event_ids)))
            yield marking
        marking.count = cur.rowcount
        return
    result = session.execute(
        update(_events)
        .where(_events.c.id == bindparam("eid"), _events.c.leaf_index.is_(None))
        .values(leaf_index=bindparam("idx")),
        [{"eid": e, "idx": start + n} for n, e in enumerate(event_ids)],
        execution_options={"synchronize_session": False},
    )
    marking.count = int(result.rowcount)  # type: ignore[attr-defined]
    yield marking


# One statement for the whole batch; `leaf_index is null` keeps an index from ever changing.
_MARK_SQL = (
    "UPDATE audit_events AS e SET leaf_index = %s::int8 + v.n - 1"
    " FROM unnest(%s::uuid[]) WITH ORDINALITY AS v (id, n)"
    " WHERE e.id = v.id AND e.leaf_index IS NULL"
)


def add_checkpoint(session: Session, row: Checkpoint) -> None:
    """Insert now: a second root for a size fails here, on the primary key."""
    session.add(row)
    session.flush()


class DbTreeStore:
    """`merkle.TreeStore` over the log_nodes table."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Stored hashes among `keys`, in one query."""
        return get_nodes(self.session, keys)


# --- who an event names --------------------------------------------------------------------


def names_any(session: Session, agencies: Collection[str]) -> ColumnElement[bool]:
    """SQL for "the event names one of `agencies`" (same rule as `leaf.agencies_named`)."""
    ids = sorted(agencies)
    if not ids:
        return false()
    details = AuditEvent.details
    clauses: list[ColumnElement[bool]] = [AuditEvent.subject.in_(ids)]
    clauses += [AuditEvent.subject.startswith(a + "/", autoescape=True) for a in ids]
    clauses += [details[key].as_string().in_(ids) for key in ("sender", "recipient", "agency")]
    if _dialect(session) == "postgresql":
        array = postgresql.array([literal(a) for a in ids])
        clauses.append(details["recipients"].op("?|")(array))
    else:
        each = func.json_each(AuditEvent.details, "$.recipients").table_valued("value")
        clauses.append(exists(select(literal(1)).select_from(each).where(each.c.value.in_(ids))))
    return or_(*clauses)


# --- reading the log -----------------------------------------------------------------------


def leaves(
    session: Session,
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
    return [(i, bytes(data), bytes(digest)) for i, data, digest in session.execute(stmt)]


def leaves_by_index(session: Session, indexes: Collection[int]) -> dict[int, bytes]:
    """Leaf bytes of the given indexes."""
    out: dict[int, bytes] = {}
    ordered = sorted(indexes)
    for i in range(0, len(ordered), _KEYS_PER_QUERY):
        rows = session.execute(
            select(_leaves.c["index"], _leaves.c.leaf_bytes).where(
                _leaves.c["index"].in_(ordered[i : i + _KEYS_PER_QUERY])
            )
        )
        out.update((index, bytes(data)) for index, data in rows)
    return out


def nodes_range(session: Session, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
    """Stored nodes of one level with index in [start, end)."""
    rows = session.execute(
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


def _where(session: Session, f: EventFilter) -> list[ColumnElement[bool]]:
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


def events(
    session: Session, f: EventFilter, *, after: uuid.UUID | None, limit: int
) -> Sequence[AuditEvent]:
    """A keyset page of events in id (UUIDv7, time) order."""
    stmt = select(AuditEvent).where(*_where(session, f)).order_by(AuditEvent.id).limit(limit)
    if after is not None:
        stmt = stmt.where(AuditEvent.id > after)
    return session.scalars(stmt).all()


def event_details(session: Session, f: EventFilter) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, details) of every matching event, streamed."""
    stmt = select(AuditEvent.kind, AuditEvent.details).where(*_where(session, f))
    for kind, details in session.execute(stmt.execution_options(yield_per=2000)):
        yield str(kind), details
