"""Queries on messages and deliveries (Core statements on the hot path)."""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BindParameter,
    Boolean,
    String,
    Table,
    Text,
    TextClause,
    bindparam,
    select,
    text,
)
from sqlalchemy.orm import Session

from broker.audit.models import AuditEvent
from broker.db import AsyncScope
from broker.messages.models import Delivery, Message, Outbox

# Plain tables: the submit path inserts rows with Core, without the ORM's bulk-insert layer.
_messages = cast(Table, Message.__table__)
_deliveries = cast(Table, Delivery.__table__)
_events = cast(Table, AuditEvent.__table__)
_outbox = cast(Table, Outbox.__table__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a replayed submit answers with: the original receipt."""

    mid: uuid.UUID
    receipt: str
    envelope_sha256: str
    received_at: datetime
    event_id: uuid.UUID


def _values(table: Table, names: Sequence[tuple[str, str]]) -> tuple[str, list[BindParameter[Any]]]:
    """`(:p1, :p2, ...)` for (column, parameter) pairs, with each column's type on its bind."""
    binds = {p: bindparam(p, type_=table.c[c].type) for c, p in names}
    return "(" + ", ".join(f":{p}" for _, p in names) + ")", list(binds.values())


def _insert_sql(table: Table, rows: Sequence[Sequence[tuple[str, str]]]) -> tuple[str, list[Any]]:
    columns = ", ".join(c for c, _ in rows[0])
    values, binds = zip(*(_values(table, row) for row in rows), strict=True)
    unique = {b.key: b for group in binds for b in group}
    # Names from the table metadata, never from a request.
    sql = f"INSERT INTO {table.name} ({columns}) VALUES {', '.join(values)}"  # noqa: S608
    return sql, list(unique.values())


@functools.cache
def _accept_sql(
    n_recipients: int, message_columns: tuple[str, ...], event_columns: tuple[str, ...]
) -> tuple[tuple[str, list[BindParameter[Any]]], ...]:
    """The four INSERTs of an accepted submit as SQL text with typed binds, once per shape.

    Text, not `insert().values()`: SQLAlchemy compiles a multi-row VALUES (and a CTE of
    them) anew on every execution, while a text statement is compiled once and cached.
    Deliveries are one multi-row INSERT: psycopg's executemany would send one per recipient.
    """
    delivery = [("id", "d_id_{i}"), ("message_id", "m_id"), ("recipient", "d_recipient_{i}")]
    delivery += [("state", "d_state"), ("created_at", "m_received_at")]
    outbox = [("topic", "o_topic"), ("ref", "m_id"), ("created_at", "m_received_at")]
    outbox += [("attempts", "o_attempts")]
    return (
        _insert_sql(_messages, [[(c, f"m_{c}") for c in message_columns]]),
        _insert_sql(
            _deliveries, [[(c, p.format(i=i)) for c, p in delivery] for i in range(n_recipients)]
        ),
        _insert_sql(_events, [[(c, f"e_{c}") for c in event_columns]]),
        _insert_sql(_outbox, [outbox]),
    )


@functools.cache
def _accept_statements(
    n_recipients: int, message_columns: tuple[str, ...], event_columns: tuple[str, ...]
) -> tuple[TextClause, ...]:
    """The four INSERTs, one statement each (SQLite)."""
    parts = _accept_sql(n_recipients, message_columns, event_columns)
    return tuple(text(sql).bindparams(*binds) for sql, binds in parts)


@functools.cache
def _accept_cte(message_columns: tuple[str, ...], event_columns: tuple[str, ...]) -> TextClause:
    """PostgreSQL: the four INSERTs as one statement (data-modifying CTEs), for any fan-out.

    One round trip and one execution instead of four. The deliveries come from
    `unnest(recipients)`, so the text is the same for 2 or 26 recipients: one prepared
    statement, and short enough for psycopg's query cache (a 26-row VALUES list is not).
    Foreign keys are checked at the end of the statement, so the deliveries may reference
    the message inserted beside them.
    """
    (message, b1), _, (event, b3), (outbox, b4) = _accept_sql(1, message_columns, event_columns)
    deliveries = (
        "INSERT INTO deliveries (id, message_id, recipient, state, created_at)"
        " SELECT gen_random_uuid(), :m_id, r, :d_state, :m_received_at"
        " FROM unnest(CAST(:d_recipients AS varchar[])) AS r"
    )
    recipients = bindparam("d_recipients", type_=ARRAY(String()))
    binds = {b.key: b for b in (*b1, *b3, *b4, recipients)}
    sql = f"WITH m AS ({message}), d AS ({deliveries}), e AS ({event}) {outbox}"
    return text(sql).bindparams(*binds.values())


def by_sender_mid(session: Session, sender: str, mid: uuid.UUID) -> Message | None:
    return session.scalar(select(Message).where(Message.sender == sender, Message.mid == mid))


def accepted(session: Session, sender: str, mid: uuid.UUID) -> Accepted | None:
    """The receipt fields of the message `(sender, mid)`, if it was accepted."""
    row = (
        session.connection()
        .execute(
            select(
                _messages.c.mid,
                _messages.c.receipt,
                _messages.c.envelope_sha256,
                _messages.c.received_at,
                _messages.c.event_id,
            ).where(_messages.c.sender == sender, _messages.c.mid == mid)
        )
        .first()
    )
    return None if row is None else Accepted(*row)


_LOCK_AND_FIND = (
    text(
        "select pg_try_advisory_xact_lock(:lock_key) as locked, m.mid, m.receipt,"
        " m.envelope_sha256, m.received_at, m.event_id"
        " from (select 1) as one"
        " left join messages as m on m.sender = :sender and m.mid = :mid"
    )
    .bindparams(bindparam("mid", type_=_messages.c.mid.type))
    .columns(
        locked=Boolean(),
        mid=_messages.c.mid.type,
        receipt=Text(),
        envelope_sha256=Text(),
        received_at=_messages.c.received_at.type,
        event_id=_messages.c.event_id.type,
    )
)


def lock_and_find(session: Session, sender: str, mid: uuid.UUID) -> tuple[bool, Accepted | None]:
    """Take the `(sender, mid)` lock without waiting, and find the message: one round trip.

    PostgreSQL: a transaction-scoped advisory lock, so that a concurrent submit of the same
    message is told 409 instead of queueing behind this one. The look-up shares the lock's
    statement snapshot, so a submit of the same message that commits in between is caught by
    the unique constraint on insert instead (the caller answers it as a replay). SQLite runs
    one transaction at a time (BEGIN IMMEDIATE) and needs no lock.
    """
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        return True, accepted(session, sender, mid)
    params = {"lock_key": _lock_key(sender, mid), "sender": sender, "mid": mid}
    row = conn.execute(_LOCK_AND_FIND, params).one()
    found = None if row.mid is None else Accepted(*row[1:])
    return bool(row.locked), found


def add_accepted(
    session: Session, message: dict[str, Any], recipients: Sequence[str], event: dict[str, Any]
) -> None:
    """Message, one queued delivery per recipient, its audit event and outbox row: one transaction."""
    params = {f"m_{k}": v for k, v in message.items()}
    params.update((f"e_{k}", v) for k, v in event.items())
    params.update(d_state="queued", o_topic="deliver", o_attempts=0)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        params["d_recipients"] = list(recipients)
        conn.execute(_accept_cte(tuple(message), tuple(event)), params)
        return
    # SQLite has no data-modifying CTEs nor arrays: the statements one by one.
    for i, recipient in enumerate(recipients):
        params[f"d_id_{i}"], params[f"d_recipient_{i}"] = uuid.uuid4(), recipient
    for statement in _accept_statements(len(recipients), tuple(message), tuple(event)):
        conn.execute(statement, params)


# --- the async submit path (PostgreSQL, asyncpg through `db.AsyncConn`): the same statements ---


_LOCK_AND_FIND_ASYNC = (
    "select pg_try_advisory_xact_lock(%(lock_key)s) as locked, m.mid, m.receipt,"
    " m.envelope_sha256, m.received_at, m.event_id"
    " from (select 1) as one"
    " left join messages as m on m.sender = %(sender)s and m.mid = %(mid)s"
)


def _lock_key(sender: str, mid: uuid.UUID) -> int:
    return int.from_bytes(
        hashlib.sha256(f"{sender}/{mid}".encode()).digest()[:8], "big", signed=True
    )


def _accepted_row(row: Sequence[Any]) -> Accepted:
    mid, receipt, envelope_sha256, received_at, event_id = row
    return Accepted(mid, receipt, envelope_sha256, received_at.astimezone(UTC), event_id)


async def lock_and_find_async(
    conn: Any, sender: str, mid: uuid.UUID
) -> tuple[bool, Accepted | None]:
    """`lock_and_find` on the async connection: one round trip."""
    cur = await conn.execute(
        _LOCK_AND_FIND_ASYNC, {"lock_key": _lock_key(sender, mid), "sender": sender, "mid": mid}
    )
    row = await cur.fetchone()
    return bool(row[0]), (None if row[1] is None else _accepted_row(row[1:]))


async def accepted_async(conn: Any, sender: str, mid: uuid.UUID) -> Accepted | None:
    """`accepted` on the async connection."""
    cur = await conn.execute(
        "select mid, receipt, envelope_sha256, received_at, event_id from messages"
        " where sender = %(sender)s and mid = %(mid)s",
        {"sender": sender, "mid": mid},
    )
    row = await cur.fetchone()
    return None if row is None else _accepted_row(row)


async def received_alerts_async(conn: Any, recipient: str, mid: uuid.UUID) -> list[tuple[str, str]]:
    """(sender, agreement) of the alerts with this mid delivered to `recipient` (`received_by`)."""
    cur = await conn.execute(
        "select m.sender, m.agreement_id from messages as m"
        " join deliveries as d on d.message_id = m.id"
        " where m.mid = %(mid)s and d.recipient = %(recipient)s and m.kind = 'alert'",
        {"mid": mid, "recipient": recipient},
    )
    return [(sender, agreement) for sender, agreement in await cur.fetchall()]


def _async_params(prefix: str, row: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in row.items()}


def _async_values(table: Table, prefix: str, columns: Sequence[str]) -> str:
    names = ", ".join(table.c[c].name for c in columns)
    return f"({names}) VALUES (" + ", ".join(f"%({prefix}{c})s" for c in columns) + ")"


@functools.cache
def _accept_async_sql(message_columns: tuple[str, ...], event_columns: tuple[str, ...]) -> str:
    """`_accept_cte` in `db.AsyncConn`'s parameter syntax: the four INSERTs as one statement."""
    # Names from the table metadata, never from a request.
    return (
        f"WITH m AS (INSERT INTO messages {_async_values(_messages, 'm_', message_columns)}),"  # noqa: S608
        " d AS (INSERT INTO deliveries (id, message_id, recipient, state, created_at)"
        " SELECT gen_random_uuid(), %(m_id)s, r, 'queued', %(m_received_at)s"
        " FROM unnest(%(d_recipients)s::varchar[]) AS r),"
        f" e AS (INSERT INTO audit_events {_async_values(_events, 'e_', event_columns)})"
        " INSERT INTO outbox (topic, ref, created_at, attempts)"
        " VALUES ('deliver', %(m_id)s, %(m_received_at)s, 0)"
    )


async def add_accepted_async(
    scope: AsyncScope, message: dict[str, Any], recipients: Sequence[str], event: dict[str, Any]
) -> None:
    """`add_accepted` on the async connection; a unique violation raises IntegrityError here."""
    params = _async_params("m_", message)
    params.update(_async_params("e_", event))
    params["d_recipients"] = list(recipients)
    await scope.conn.execute(_accept_async_sql(tuple(message), tuple(event)), params)


async def add_event_async(conn: Any, event: dict[str, Any]) -> None:
    """Insert one audit event (a refusal's `msg.rejected`, an acknowledgement's `msg.acked`)."""
    await add_events_async(conn, [event])


async def add_events_async(conn: Any, events: Sequence[dict[str, Any]]) -> None:
    """Insert audit events with the same columns in one statement (a page's `msg.fetched`)."""
    if not events:
        return
    columns = tuple(events[0])
    names = ", ".join(_events.c[c].name for c in columns)
    rows, params = [], {}
    for i, event in enumerate(events):
        params.update(_async_params(f"e{i}_", event))
        rows.append("(" + ", ".join(f"%(e{i}_{c})s" for c in columns) + ")")
    # Names from the table metadata, never from a request.
    await conn.execute(f"INSERT INTO audit_events ({names}) VALUES {', '.join(rows)}", params)  # noqa: S608


def deliveries_of(session: Session, message_id: uuid.UUID) -> Sequence[Delivery]:
    return session.scalars(
        select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.recipient)
    ).all()


def leaf_index(session: Session, event_id: uuid.UUID) -> int | None:
    return session.scalar(select(AuditEvent.leaf_index).where(AuditEvent.id == event_id))


def delivery_for(session: Session, recipient: str, sender: str, mid: uuid.UUID) -> Delivery | None:
    return session.scalar(
        select(Delivery)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.recipient == recipient, Message.sender == sender, Message.mid == mid)
    )


def received_by(
    session: Session, recipient: str, mid: uuid.UUID
) -> Sequence[tuple[Message, Delivery]]:
    """Messages with this mid that were delivered to `recipient` (mids are unique per sender)."""
    rows = session.execute(
        select(Message, Delivery)
        .join(Delivery, Delivery.message_id == Message.id)
        .where(Message.mid == mid, Delivery.recipient == recipient)
    ).all()
    return [(m, d) for m, d in rows]
