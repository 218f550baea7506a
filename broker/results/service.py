"""Operation results: the signed feedback on an operation's alerts, rolled up and traced.

What counts: a feedback message counts for the operation of the alert it answers
(`repository`), in the phase whose [starts_at, ends_at) contains the time the broker accepted it
(null, "outside", when none does) and in that time's ISO 8601 week (UTC). That time is the
message's `received_at`, the instant of its `msg.accepted` event, which the log leaf carries
(`ts`, in milliseconds): every figure can be listed message by message with its leaf index, and
each leaf proved included in a signed checkpoint.

Who may read them: the operation's coordinating agency (its agency principal and its focal
points) sees every figure; an auditor who oversees at least one member sees the figures of the
feedback sent by or to an agency it oversees (the rule by which the log shows it the leaves);
every other caller is refused (403). An auditor's reads are recorded on the log
(`audit.queried`), as its other queries are.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, get_args

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agreements import repository as agreement_repo
from broker.agreements.models import Operation
from broker.audit import service as audit
from broker.audit.auditor import BadCursor, BadFilter, NotOverseen, rfc3339
from broker.auth.service import Caller, Role
from broker.errors import FieldProblem, Forbidden, NotFound
from broker.ids import AGENCY_ID
from broker.results import repository
from broker.results.repository import NONE, Bucket, Group, Scope
from broker.results.schemas import (
    FeedbackOut,
    FeedbackPage,
    GroupOut,
    PhaseOut,
    ResultsOut,
    Rollup,
)
from broker.schemas import vocab

OUTSIDE = "outside"  # the phase of feedback accepted outside every phase
PAGE = 100
MAX_PAGE = 1000
WEEK = re.compile(r"^([0-9]{4})-W([0-9]{2})$")
AGENCY = re.compile(AGENCY_ID)
OPERATION_ID = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,40}$")  # defs.json object-id
DIMENSIONS = ("phase", "week", "agency", "outcome", "commodity", "quantity_band")
CSV_COLUMNS = (*DIMENSIONS, "count")


@dataclass(frozen=True)
class Figure:
    """The values that select the feedback behind one figure; None means any."""

    phase: str | None = None
    week: str | None = None
    agency: str | None = None
    outcome: str | None = None
    commodity: str | None = None
    quantity_band: str | None = None

    def query(self) -> dict[str, str]:
        """The figure as query parameters (for links to its feedback)."""
        return {k: v for k, v in vars(self).items() if v is not None}


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def phases_of(op: Operation) -> list[Bucket]:
    """The operation's phases as half-open time ranges, in order."""
    return [
        Bucket(p["name"], _parse_time(p["starts_at"]), _parse_time(p["ends_at"]))
        for p in op.document.get("phases") or []
    ]


def week_label(moment: datetime) -> str:
    """The ISO 8601 week (UTC) of an instant: `2026-W49`."""
    year, week, _ = moment.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _week_bucket(year: int, week: int) -> Bucket:
    monday = datetime.combine(date.fromisocalendar(year, week, 1), time(), UTC)
    return Bucket(f"{year}-W{week:02d}", monday, monday + timedelta(days=7))


def weeks_between(first: datetime | None, last: datetime | None) -> list[Bucket]:
    """Every ISO week from the one holding `first` to the one holding `last`."""
    if first is None or last is None:
        return []
    year, week, _ = first.astimezone(UTC).isocalendar()
    bucket = _week_bucket(year, week)
    out = []
    while bucket.starts <= last:
        out.append(bucket)
        year, week, _ = bucket.ends.isocalendar()
        bucket = _week_bucket(year, week)
    return out


async def _operation(session: AsyncSession, operation_id: str) -> Operation:
    """The operation named in the path; 404 for an unknown one."""
    # No look-up for what no operation id can be (a NUL would be refused by PostgreSQL).
    found = OPERATION_ID.match(operation_id) is not None
    op = await agreement_repo.operation(session, operation_id) if found else None
    if op is None:
        raise NotFound(f"no operation {operation_id[:64]!r}")
    return op


def visible_for(caller: Caller, op: Operation) -> frozenset[str] | None:
    """The agencies whose feedback the caller may count (None: all), or a refusal."""
    members = [str(m) for m in op.document.get("members", [])]
    if caller.role is Role.auditor:
        visible = caller.audit_agencies
        if visible is not None and not any(m in visible for m in members):
            raise NotOverseen(f"you oversee no member of {op.id}")
        return visible
    coordinator = op.document.get("coordinator")
    if caller.agency_id is not None and caller.agency_id == coordinator:
        return None
    raise Forbidden(f"only {op.id}'s coordinating agency and its auditors may read its results")


def _choice(name: str, value: str | None, allowed: Iterable[str]) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise BadFilter(
            f"{name} {value[:40]!r} is not one of the operation's values",
            errors=[FieldProblem(pointer=f"/query/{name}", detail="not an allowed value")],
        )
    return value


def parse_figure(op: Operation, **values: str | None) -> Figure:
    """Check a figure's query values: phases of the operation, ISO weeks, vocabulary codes."""
    phase = _choice("phase", values.get("phase"), [*(b.label for b in phases_of(op)), OUTSIDE])
    week = values.get("week") or None
    if week is not None:
        m = WEEK.match(week)
        try:
            if m is None:
                raise ValueError(week)
            _week_bucket(int(m.group(1)), int(m.group(2)))
        except (ValueError, OverflowError):  # no such week; the week after 9999-W52
            raise BadFilter(
                "week is an ISO 8601 week such as 2026-W49",
                errors=[FieldProblem(pointer="/query/week", detail="not an ISO week")],
            ) from None
    agency = values.get("agency") or None
    if agency is not None and not AGENCY.match(agency):
        raise BadFilter(
            "agency is an agency id such as VN-GDC",
            errors=[FieldProblem(pointer="/query/agency", detail="not an agency id")],
        )
    return Figure(
        phase=phase,
        week=week,
        agency=agency,
        outcome=_choice("outcome", values.get("outcome"), get_args(vocab.Outcome)),
        commodity=_choice("commodity", values.get("commodity"), [*get_args(vocab.Commodity), NONE]),
        quantity_band=_choice(
            "quantity_band", values.get("quantity_band"), [*get_args(vocab.QuantityBand), NONE]
        ),
    )


def _narrowed(scope: Scope, op: Operation, figure: Figure) -> Scope:
    phases = phases_of(op)
    if figure.phase == OUTSIDE:
        scope = replace(scope, outside=tuple(phases))
    elif figure.phase is not None:
        scope = replace(scope, ranges=tuple(b for b in phases if b.label == figure.phase))
    if figure.week is not None:
        m = WEEK.match(figure.week)
        assert m is not None  # parse_figure checked it
        week = _week_bucket(int(m.group(1)), int(m.group(2)))
        within = scope.ranges
        # A week inside a phase: the phase's range clipped to the week.
        clipped = (
            (week,)
            if within is None
            else tuple(
                Bucket(b.label, max(b.starts, week.starts), min(b.ends, week.ends))
                for b in within
                if b.starts < week.ends and week.starts < b.ends
            )
        )
        scope = replace(scope, ranges=clipped)
    return replace(
        scope,
        agency=figure.agency,
        outcome=figure.outcome,
        commodity=figure.commodity,
        quantity_band=figure.quantity_band,
    )


async def _record(
    session: AsyncSession, caller: Caller, query: str, op: str, figure: Figure, returned: int
) -> None:
    if caller.role is not Role.auditor:
        return
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={
            "query": query,
            "filters": {"operation": op, **figure.query()},
            "returned": returned,
        },
    )


def _rollup(groups: list[Group], dimension: str) -> list[Rollup]:
    counts: Counter[str | None] = Counter()
    for g in groups:
        counts[getattr(g, dimension)] += g.count
    return [Rollup(value=v, count=n) for v, n in sorted(counts.items(), key=lambda kv: kv[0] or "")]


def _sort_key(g: Group) -> tuple[str, ...]:
    return tuple(str(getattr(g, d) or "") for d in DIMENSIONS)


async def grouped(
    session: AsyncSession, caller: Caller, operation_id: str, *, phase: str | None = None
) -> tuple[Operation, Scope, Figure, list[Group]]:
    """The operation, the caller's scope, the phase filter and the grouped counts."""
    op = await _operation(session, operation_id)
    scope = Scope(operation=op.id, visible=visible_for(caller, op))
    figure = parse_figure(op, phase=phase)
    narrowed = _narrowed(scope, op, figure)
    first, last = await repository.span(session, narrowed)
    groups = await repository.groups(
        session, narrowed, phases=phases_of(op), weeks=weeks_between(first, last)
    )
    return op, scope, figure, sorted(groups, key=_sort_key)


async def results(
    session: AsyncSession, caller: Caller, operation_id: str, *, phase: str | None = None
) -> ResultsOut:
    """The operation's feedback counted by phase, week, agency, outcome, commodity and band."""
    op, scope, figure, groups = await grouped(session, caller, operation_id, phase=phase)
    total = sum(g.count for g in groups)
    await _record(session, caller, "results.summary", op.id, figure, total)
    doc = op.document
    return ResultsOut(
        operation=op.id,
        title=str(doc.get("title", "")),
        agreement=op.agreement_id,
        coordinator=doc.get("coordinator"),
        starts_at=op.starts_at,
        ends_at=op.ends_at,
        phases=[PhaseOut.model_validate(p) for p in doc.get("phases") or []],
        phase=figure.phase,
        agencies=sorted(scope.visible) if scope.visible is not None else None,
        total=total,
        groups=[GroupOut.model_validate(g, from_attributes=True) for g in groups],
        **{f"by_{d}": _rollup(groups, d) for d in DIMENSIONS},
    )


async def results_csv(
    session: AsyncSession, caller: Caller, operation_id: str, *, phase: str | None = None
) -> str:
    """The grouped counts as CSV (RFC 4180): a header, then one row per group.

    Absent values are written as `outside` (phase) and `none` (commodity, quantity band), the
    values the feedback listing takes to select them.
    """
    op, _, figure, groups = await grouped(session, caller, operation_id, phase=phase)
    await _record(session, caller, "results.csv", op.id, figure, sum(g.count for g in groups))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for g in groups:
        writer.writerow(
            [
                g.phase or OUTSIDE,
                g.week,
                g.agency,
                g.outcome,
                g.commodity or NONE,
                g.quantity_band or NONE,
                g.count,
            ]
        )
    return out.getvalue()


def _cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        at, row_id = cursor.split("~", 1)
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError(at)
        return moment.astimezone(UTC), uuid.UUID(row_id)
    except (ValueError, OverflowError):
        raise BadCursor("the cursor is the `next_cursor` of the previous page") from None


def _phase_at(phases: list[Bucket], moment: datetime) -> str | None:
    return next((b.label for b in phases if b.starts <= moment < b.ends), None)


async def feedback(
    session: AsyncSession,
    caller: Caller,
    operation_id: str,
    figure_values: dict[str, str | None],
    *,
    cursor: str | None = None,
    limit: int = PAGE,
) -> FeedbackPage:
    """The feedback messages behind one figure, oldest first, with their log leaves."""
    op = await _operation(session, operation_id)
    scope = Scope(operation=op.id, visible=visible_for(caller, op))
    figure = parse_figure(op, **figure_values)
    narrowed = _narrowed(scope, op, figure)
    after = _cursor(cursor)
    limit = min(max(limit, 1), MAX_PAGE)
    total = await repository.count(session, narrowed)
    rows = await repository.feedback(session, narrowed, after=after, limit=limit)
    await _record(session, caller, "results.feedback", op.id, figure, len(rows))
    phases = phases_of(op)
    items = [
        FeedbackOut(
            mid=r.mid,
            sender=r.sender,
            recipient=r.recipient,
            in_reply_to=r.in_reply_to,
            accepted_at=r.accepted_at,
            phase=_phase_at(phases, r.accepted_at),
            week=week_label(r.accepted_at),
            outcome=r.outcome,
            commodity=r.commodity,
            quantity_band=r.quantity_band,
            event_id=r.event_id,
            leaf_index=r.leaf_index,
        )
        for r in rows
    ]
    last = rows[-1] if len(rows) == limit else None
    next_cursor = f"{rfc3339(last.accepted_at)}~{last.id}" if last is not None else None
    return FeedbackPage(operation=op.id, total=total, items=items, next_cursor=next_cursor)


def operations_seen(ops: Iterable[Operation], caller: Caller) -> list[Operation]:
    """The operations whose results the caller may read (for the console's list)."""
    out = []
    for op in ops:
        try:
            visible_for(caller, op)
        except (Forbidden, NotOverseen):
            continue
        out.append(op)
    return out


def describe(op: Operation) -> dict[str, Any]:
    """What a list of operations shows of one."""
    doc = op.document
    return {
        "id": op.id,
        "title": doc.get("title", ""),
        "agreement": op.agreement_id,
        "coordinator": doc.get("coordinator"),
        "starts_at": op.starts_at,
        "ends_at": op.ends_at,
        "members": doc.get("members", []),
        "phases": len(doc.get("phases") or []),
        "status": op.status,
    }
