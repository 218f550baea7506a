"""Queries for operation results: the feedback on an operation's alerts, grouped or listed.

A feedback message belongs to the operation of the alert it answers. Its routing names the alert
by mid alone (`in_reply_to`), and goes back to the alert's sender only (the submit path checks
both), so the alert is the message of kind `alert` with that mid from the feedback's one
recipient: a join through the feedback's delivery. The feedback's own `operation` field is not
used: feedback that comes after the operation's window must name no operation to be accepted
(scope.operation_outside_window), yet it still reports on the operation's alert. A feedback
that its sender has since corrected (a later message whose `supersedes` names it) does not
count: its correction does, once.

Time buckets (phases, ISO weeks) are CASE expressions over bound instants computed by the
service, so one statement groups in SQL on SQLite and PostgreSQL alike, with no dialect's date
functions. The grouping runs over a subquery, as PostgreSQL cannot match a GROUP BY expression
holding bound parameters with the same expression in the select list.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, null, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement as Column

from broker.audit.models import AuditEvent
from broker.messages.models import Delivery, Message

_feedback = aliased(Message, name="feedback")
_alert = aliased(Message, name="alert")
_to = aliased(Delivery, name="feedback_delivery")
_correction = aliased(Message, name="correction")

_outcome = _feedback.routing["outcome"].as_string()
_commodity = _feedback.routing["commodity"].as_string()
_quantity_band = _feedback.routing["quantity_band"].as_string()
_accepted_at = _feedback.received_at

# A label for values that are absent (no phase contains the time; no commodity or band given).
NONE = "none"


@dataclass(frozen=True, slots=True)
class Bucket:
    """A half-open time range [starts, ends) with its label (a phase name or an ISO week)."""

    label: str
    starts: datetime
    ends: datetime


@dataclass(frozen=True, slots=True)
class Scope:
    """Which feedback: the operation, the agencies the caller may see, the figure's filters.

    `visible` None: every agency. Otherwise feedback counts when its sender or its recipient
    (the alert's sender) is visible, the rule by which the log shows its leaf to an auditor.
    `ranges`: feedback accepted inside any of them (a phase, a week); `outside`: feedback in
    none of them (the "outside" phase). Dimension filters: None means any, NONE means absent.
    """

    operation: str
    visible: frozenset[str] | None = None
    ranges: tuple[Bucket, ...] | None = None
    outside: tuple[Bucket, ...] | None = None
    agency: str | None = None
    outcome: str | None = None
    commodity: str | None = None
    quantity_band: str | None = None


def _in(bucket: Bucket) -> ColumnElement[bool]:
    return and_(_accepted_at >= bucket.starts, _accepted_at < bucket.ends)


def _value(column: Column[Any], wanted: str) -> ColumnElement[bool]:
    return column.is_(None) if wanted == NONE else column == wanted


def _base(scope: Scope, *columns: Any) -> Select[Any]:
    """SELECT `columns` FROM the operation's feedback (with its delivery and its alert)."""
    stmt = (
        select(*columns)
        .select_from(_feedback)
        .join(_to, _to.message_id == _feedback.id)
        .join(
            _alert,
            and_(
                _alert.mid == _feedback.in_reply_to,
                _alert.sender == _to.recipient,
                _alert.kind == "alert",
            ),
        )
        .where(
            _feedback.kind == "feedback",
            _alert.operation_id == scope.operation,
            # A corrected feedback counts as its correction (the sender's latest word) only.
            ~select(_correction.id)
            .where(_correction.sender == _feedback.sender, _correction.supersedes == _feedback.mid)
            .exists(),
        )
    )
    if scope.visible is not None:
        seen = sorted(scope.visible)
        stmt = stmt.where(or_(_feedback.sender.in_(seen), _to.recipient.in_(seen)))
    if scope.ranges is not None:
        stmt = stmt.where(or_(*[_in(b) for b in scope.ranges]) if scope.ranges else literal(False))
    if scope.outside:
        stmt = stmt.where(~or_(*[_in(b) for b in scope.outside]))
    if scope.agency is not None:
        stmt = stmt.where(_feedback.sender == scope.agency)
    for column, wanted in (
        (_outcome, scope.outcome),
        (_commodity, scope.commodity),
        (_quantity_band, scope.quantity_band),
    ):
        if wanted is not None:
            stmt = stmt.where(_value(column, wanted))
    return stmt


async def span(session: AsyncSession, scope: Scope) -> tuple[datetime | None, datetime | None]:
    """The first and last acceptance time of the feedback in scope (None, None for none)."""
    row = (
        await session.execute(_base(scope, func.min(_accepted_at), func.max(_accepted_at)))
    ).one()
    return row[0], row[1]


def _bucket(buckets: Sequence[Bucket]) -> Column[Any]:
    if not buckets:
        return null()
    return case(*[(_in(b), literal(b.label)) for b in buckets], else_=null())


@dataclass(frozen=True, slots=True)
class Group:
    """One cell of the roll-up: a count per phase, week, agency, outcome, commodity, band."""

    phase: str | None
    week: str | None
    agency: str
    outcome: str
    commodity: str | None
    quantity_band: str | None
    count: int


async def groups(
    session: AsyncSession, scope: Scope, *, phases: Sequence[Bucket], weeks: Sequence[Bucket]
) -> list[Group]:
    """Counts grouped by every dimension, in one statement."""
    rows = _base(
        scope,
        _bucket(phases).label("phase"),
        _bucket(weeks).label("week"),
        _feedback.sender.label("agency"),
        _outcome.label("outcome"),
        _commodity.label("commodity"),
        _quantity_band.label("quantity_band"),
    ).subquery("rows")
    keys = (
        rows.c.phase,
        rows.c.week,
        rows.c.agency,
        rows.c.outcome,
        rows.c.commodity,
        rows.c.quantity_band,
    )
    stmt = select(*keys, func.count()).group_by(*keys)
    return [Group(*row) for row in (await session.execute(stmt)).all()]


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """One feedback message behind a figure, with the log leaf of its `msg.accepted` event."""

    mid: uuid.UUID
    sender: str
    recipient: str
    in_reply_to: uuid.UUID
    accepted_at: datetime
    outcome: str
    commodity: str | None
    quantity_band: str | None
    event_id: uuid.UUID
    leaf_index: int | None
    id: uuid.UUID


async def count(session: AsyncSession, scope: Scope) -> int:
    """How many feedback messages the scope selects."""
    return int((await session.execute(_base(scope, func.count()))).scalar_one())


async def feedback(
    session: AsyncSession, scope: Scope, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[FeedbackRow]:
    """One keyset page of the feedback in scope, by acceptance time (then row id)."""
    stmt = _base(
        scope,
        _feedback.mid,
        _feedback.sender,
        _to.recipient,
        _feedback.in_reply_to,
        _accepted_at,
        _outcome,
        _commodity,
        _quantity_band,
        _feedback.event_id,
        AuditEvent.leaf_index,
        _feedback.id,
    ).outerjoin(AuditEvent, AuditEvent.id == _feedback.event_id)
    if after is not None:
        at, row_id = after
        stmt = stmt.where(or_(_accepted_at > at, and_(_accepted_at == at, _feedback.id > row_id)))
    stmt = stmt.order_by(_accepted_at, _feedback.id).limit(limit)
    return [FeedbackRow(*row) for row in (await session.execute(stmt)).all()]
