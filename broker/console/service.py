"""What the console's pages show: event rows, message timelines, volume charts, log verification.

The console reads through the auditor's services (`broker.audit.auditor`), so an auditor bound to
some agencies sees only the events that name one of them, and every query is itself an audit
event (`audit.queried`). Two views need a query the auditor service does not offer (all the
events of one message id, and accepted/rejected counts per day): they apply the same rule
(`log.visible_agencies`, through `broker.audit.repository`) and record their own
`audit.queried` event. "Verify now" runs the log verifier's quick checks on this broker's stored
log with the auditor's own scope, in the request's transaction; a full verification runs in the
background, one at a time, and its result is kept (`console_verification_runs`).

The console's sessions are server-side rows (`console_sessions`): see `broker.console.router`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import math
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, jobs
from broker.agencies import service as agencies
from broker.agreements import service as agreements
from broker.audit import auditor, log, verify
from broker.audit import repository as audit_repo
from broker.audit import service as audit
from broker.audit.repository import EventFilter
from broker.audit.schemas import EventOut, Summary
from broker.auth import repository as auth_repo
from broker.auth import service as auth
from broker.auth.service import Caller, Role
from broker.config import settings
from broker.console import repository
from broker.console.models import ConsoleSession, VerificationRun
from broker.errors import BrokerError, Forbidden, NotFound, Unauthenticated, exists
from broker.ids import new_id, utcnow
from broker.results import repository as results_repo
from broker.results import service as results_service
from broker.results.schemas import FeedbackPage, ResultsOut, Rollup

PAGE = 50
MAX_PAGE = 200
MAX_TIMELINE = 500
MESSAGE_KINDS = (
    "msg.accepted",
    "msg.rejected",
    "msg.delivered",
    "msg.fetched",
    "msg.acked",
    "msg.expired",
    "msg.recalled",
    "msg.recall_complied",
)
# The kind filter: form value -> (label, kinds); "" is the default view.
KIND_CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "": ("Message events", MESSAGE_KINDS),
    "msg.accepted": ("Accepted", ("msg.accepted",)),
    "msg.rejected": ("Rejected attempts", ("msg.rejected",)),
    "msg.delivered": ("Delivered", ("msg.delivered",)),
    "msg.fetched": ("Fetched", ("msg.fetched",)),
    "msg.acked": ("Acknowledged", ("msg.acked",)),
    "audit": ("Auditors' queries and exports", ("audit.queried", "audit.exported")),
    "all": ("Every event", ()),
}
LABELS = {
    "msg.accepted": ("accepted", "ok"),
    "msg.rejected": ("rejected", "bad"),
    "msg.delivered": ("delivered", "info"),
    "msg.fetched": ("fetched", "info"),
    "msg.acked": ("acknowledged", "ok"),
    "msg.expired": ("expired", "warn"),
    "msg.recalled": ("recalled", "warn"),
    "msg.recall_complied": ("recall answered", "ok"),
    "msg.purged": ("purged", "muted"),
    "audit.queried": ("auditor query", "muted"),
    "audit.exported": ("auditor export", "muted"),
}
GOOD_ACKS = frozenset({"received", "decrypted"})
PERIODS = (7, 30, 90)


class NoSuchMessage(BrokerError, code="console.no_such_message"): ...


class NoSuchAgreement(BrokerError, code="console.no_such_agreement"): ...


BadFilter = auditor.BadFilter


# --- filters -------------------------------------------------------------------------------


def midnight(day: date) -> datetime:
    """The start of a UTC day."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    """The exchange log's filter form; `until` is an inclusive day (UTC)."""

    since: date | None = None
    until: date | None = None
    agency: str | None = None
    agreement: str | None = None
    operation: str | None = None
    kind: str = ""
    reason: str | None = None

    def event_filter(self, kinds: tuple[str, ...] | None = None) -> EventFilter:
        return EventFilter(
            since=midnight(self.since) if self.since else None,
            until=midnight(self.until + timedelta(days=1)) if self.until else None,
            agency=self.agency,
            agreement=self.agreement,
            operation=self.operation,
            kinds=KIND_CHOICES[self.kind][1] if kinds is None else kinds,
            reason=self.reason,
        )

    def form(self) -> dict[str, str]:
        """The values as the form shows them."""
        return {
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "agency": self.agency or "",
            "agreement": self.agreement or "",
            "operation": self.operation or "",
            "kind": self.kind,
            "reason": self.reason or "",
        }

    def query(self, **extra: str | int | None) -> str:
        """A query string reproducing these filters (plus `extra`)."""
        values: dict[str, str | int | None] = {**self.form(), **extra}
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _text(value: str | None, name: str, limit: int) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > limit or not value.isprintable():
        raise BadFilter(f"`{name}` is not a valid value")
    return value


def _day(value: str | None, name: str) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"`{name}` must be a date such as 2026-11-23") from None


def parse_filters(
    *,
    since: str | None = None,
    until: str | None = None,
    agency: str | None = None,
    agreement: str | None = None,
    operation: str | None = None,
    kind: str | None = None,
    reason: str | None = None,
) -> Filters:
    """The form's strings, checked: empty means no filter."""
    kind = (kind or "").strip()
    if kind not in KIND_CHOICES:
        raise BadFilter(f"unknown event kind {kind[:40]!r}")
    filters = Filters(
        since=_day(since, "from"),
        until=_day(until, "to"),
        agency=_text(agency, "agency", 16),
        agreement=_text(agreement, "agreement", 64),
        operation=_text(operation, "operation", 64),
        kind=kind,
        reason=_text(reason, "reason", 64),
    )
    if filters.since and filters.until and filters.until < filters.since:
        raise BadFilter("the `to` day is before the `from` day")
    return filters


# --- rows ----------------------------------------------------------------------------------


def _str(details: dict[str, Any], key: str) -> str | None:
    value = details.get(key)
    return value if isinstance(value, str) and value else None


def _int(details: dict[str, Any], key: str) -> int | None:
    value = details.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scalars(details: dict[str, Any], limit: int = 160) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, dict):
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value if not isinstance(v, dict | list))
        parts.append(f"{key}={value}")
    text = " · ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Row:
    """One audit event as the console lists it."""

    id: str
    at: datetime
    kind: str
    label: str
    tone: str
    actor: str
    subject: str | None
    mid: str | None
    origin: str | None
    targets: list[str]
    agreement: str | None
    operation: str | None
    offence: str | None
    reason: str | None
    status: str | None
    envelope_sha256: str | None
    delay_ms: int | None
    leaf_index: int | None
    other: str


def row(event: EventOut) -> Row:
    """The console's view of an event (metadata only, as the event itself)."""
    d = event.details
    label, tone = LABELS.get(event.kind, (event.kind, "muted"))
    status = _str(d, "status")
    if event.kind == "msg.acked" and status not in GOOD_ACKS:
        tone = "warn"
    message = event.kind in MESSAGE_KINDS
    recipients = d.get("recipients")
    if isinstance(recipients, list):
        targets = [str(r) for r in recipients]
    else:
        targets = [r] if (r := _str(d, "recipient")) else []
    mid = _str(d, "mid")
    try:
        mid = str(uuid.UUID(mid)) if mid else None
    except ValueError:
        mid = None
    return Row(
        id=str(event.id),
        at=event.created_at,
        kind=event.kind,
        label=label,
        tone=tone,
        actor=event.actor,
        subject=event.subject,
        mid=mid,
        origin=_str(d, "sender_fp") or _str(d, "sender"),
        targets=targets,
        agreement=_str(d, "agreement"),
        operation=_str(d, "operation"),
        offence=_str(d, "offence"),
        reason=_str(d, "reason"),
        status=status,
        envelope_sha256=_str(d, "envelope_sha256"),
        delay_ms=_int(d, "delay_ms"),
        leaf_index=event.leaf_index,
        other="" if message else _scalars(d),
    )


async def event_page(
    session: AsyncSession,
    caller: Caller,
    f: EventFilter,
    *,
    cursor: str | None,
    limit: int = PAGE,
) -> tuple[list[Row], str | None]:
    """One page of the exchange log, through `auditor.events` (scoped, and recorded)."""
    page = await auditor.events(
        session, caller, f, cursor=cursor, limit=min(max(limit, 1), MAX_PAGE)
    )
    return [row(e) for e in page.items], page.next_cursor


# --- what the auditor may pick in the filters ----------------------------------------------


@dataclass(frozen=True)
class AgreementItem:
    id: str
    title: str
    kind: str
    status: str
    parties: list[str]


def _sees(caller: Caller, parties: list[str]) -> bool:
    visible = log.visible_agencies(caller)
    return visible is None or any(p in visible for p in parties)


async def agreements_for(session: AsyncSession, caller: Caller) -> list[AgreementItem]:
    """Agreements with at least one party the auditor oversees."""
    items = []
    for version in await agreements.list_current(session):
        doc = version.document
        parties = [str(p) for p in doc.get("parties", [])]
        if _sees(caller, parties):
            items.append(
                AgreementItem(
                    id=str(doc["id"]),
                    title=str(doc.get("title", "")),
                    kind=str(doc.get("kind", "")).replace("_", " "),
                    status=str(doc.get("status", "")),
                    parties=sorted(parties),
                )
            )
    return sorted(items, key=lambda a: a.id)


async def agencies_for(session: AsyncSession, caller: Caller) -> list[tuple[str, str]]:
    """(id, name) of the agencies the auditor oversees."""
    visible = log.visible_agencies(caller)
    return [
        (a.id, a.name)
        for a in sorted(await agencies.list_agencies(session), key=lambda a: a.id)
        if visible is None or a.id in visible
    ]


async def operations_for(session: AsyncSession, caller: Caller) -> list[tuple[str, str]]:
    """(id, agreement) of the operations with a member the auditor oversees."""
    return [
        (op.id, op.agreement_id)
        for op in sorted(await agreements.list_operations(session), key=lambda o: o.id)
        if _sees(caller, [str(m) for m in op.document.get("members", [])])
    ]


@dataclass(frozen=True)
class Choices:
    """What the filter form offers the auditor."""

    agencies: list[tuple[str, str]]
    agreements: list[AgreementItem]
    operations: list[tuple[str, str]]
    kinds: list[tuple[str, str]]


async def choices(session: AsyncSession, caller: Caller) -> Choices:
    """The agencies, agreements and operations the auditor oversees, and the event kinds."""
    return Choices(
        agencies=await agencies_for(session, caller),
        agreements=await agreements_for(session, caller),
        operations=await operations_for(session, caller),
        kinds=[(value, label) for value, (label, _) in KIND_CHOICES.items()],
    )


# --- one message ---------------------------------------------------------------------------


@dataclass
class Delivery:
    """What happened at one recipient."""

    agency: str
    delivered_at: datetime | None = None
    delivery_delay_ms: int | None = None
    fetched_at: datetime | None = None
    fetches: int = 0
    acked_at: datetime | None = None
    status: str | None = None
    reason: str | None = None
    ack_delay_ms: int | None = None
    expired_at: datetime | None = None
    # Recall: `withdrawn` unread or `notified`; then the answer (`erased`, `retained`).
    recall: str | None = None
    answer: str | None = None
    answer_late: bool = False


@dataclass
class Timeline:
    """Every event of one message id that the auditor may see, oldest first."""

    mid: str
    accepted: Row | None
    details: dict[str, Any]
    deliveries: list[Delivery]
    events: list[Row]
    rejected: list[Row] = field(default_factory=list)
    recall: dict[str, Any] = field(default_factory=dict)
    purged: Row | None = None


async def message_timeline(session: AsyncSession, caller: Caller, mid_text: str) -> Timeline:
    """A message's timeline; 404 alike for an unknown id and for one the auditor may not see."""
    try:
        mid = str(uuid.UUID(mid_text))
    except ValueError:
        raise NoSuchMessage("a message id is a UUID") from None
    found = await audit_repo.message_events(
        session,
        mid,
        kinds=MESSAGE_KINDS,
        visible=log.visible_agencies(caller),
        limit=MAX_TIMELINE,
    )
    visible = log.visible_agencies(caller)
    purges = await audit_repo.purge_events(session, mid, visible=visible)
    events = [EventOut.model_validate(e) for e in [*found, *purges]]
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={"query": "console.message", "filters": {"mid": mid}, "returned": len(events)},
    )
    if not events:
        raise NoSuchMessage(f"no message {mid} among the events you may see")
    rows = [row(e) for e in events]
    accepted = next((e for e in events if e.kind == "msg.accepted"), None)
    deliveries: dict[str, Delivery] = {}
    if accepted is not None:
        for r in row(accepted).targets:
            deliveries[r] = Delivery(agency=r)
    recall = next((e for e in events if e.kind == "msg.recalled"), None)
    if recall is not None:
        for outcome in ("withdrawn", "notified"):
            for agency in recall.details.get(outcome) or ():
                deliveries.setdefault(str(agency), Delivery(agency=str(agency))).recall = outcome
    for e in events:
        agency = _str(e.details, "recipient")
        watched = (
            "msg.delivered",
            "msg.fetched",
            "msg.acked",
            "msg.expired",
            "msg.recall_complied",
        )
        if agency is None or e.kind not in watched:
            continue
        d = deliveries.setdefault(agency, Delivery(agency=agency))
        if e.kind == "msg.expired":
            d.expired_at = e.created_at
        elif e.kind == "msg.recall_complied":
            d.answer, d.answer_late = _str(e.details, "status"), e.details.get("late") is True
        if e.kind == "msg.delivered" and d.delivered_at is None:
            d.delivered_at, d.delivery_delay_ms = e.created_at, _int(e.details, "delay_ms")
        elif e.kind == "msg.fetched":
            d.fetches += 1
            d.fetched_at = d.fetched_at or e.created_at
        elif e.kind == "msg.acked":
            d.acked_at, d.ack_delay_ms = e.created_at, _int(e.details, "delay_ms")
            d.status, d.reason = _str(e.details, "status"), _str(e.details, "reason")
    return Timeline(
        mid=mid,
        accepted=row(accepted) if accepted is not None else None,
        details=dict(accepted.details) if accepted is not None else {},
        deliveries=list(deliveries.values()),
        events=rows,
        rejected=[r for r in rows if r.kind == "msg.rejected"],
        recall=dict(recall.details) if recall is not None else {},
        purged=next((r for r in rows if r.kind == "msg.purged"), None),
    )


# --- agreements: volume charts -------------------------------------------------------------


async def agreement_for(session: AsyncSession, caller: Caller, agreement_id: str) -> AgreementItem:
    """An agreement the auditor oversees a party of; 404 otherwise."""
    for item in await agreements_for(session, caller):
        if item.id == agreement_id:
            return item
    raise NoSuchAgreement(f"no agreement {agreement_id[:64]!r} among those you oversee")


@dataclass(frozen=True)
class DayCount:
    day: date
    accepted: int
    rejected: int


async def daily_volume(
    session: AsyncSession, caller: Caller, agreement_id: str, *, days: int, today: date
) -> list[DayCount]:
    """Accepted messages and rejected attempts per day (UTC) under an agreement."""
    first = today - timedelta(days=days - 1)
    since = midnight(first)
    counts: Counter[tuple[date, str]] = Counter()
    async for kind, at in audit_repo.kind_times(
        session,
        kinds=("msg.accepted", "msg.rejected"),
        agreement=agreement_id,
        since=since,
        visible=log.visible_agencies(caller),
    ):
        counts[(at.astimezone(UTC).date(), kind)] += 1
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={
            "query": "console.volume",
            "filters": {"agreement": agreement_id, "since": auditor.rfc3339(since)},
            "returned": sum(counts.values()),
        },
    )
    return [
        DayCount(
            day=first + timedelta(days=i),
            accepted=counts[(first + timedelta(days=i), "msg.accepted")],
            rejected=counts[(first + timedelta(days=i), "msg.rejected")],
        )
        for i in range(days)
    ]


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"
    cls: str = "axis"


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    cls: str = "grid"


@dataclass(frozen=True)
class Chart:
    """An SVG bar chart laid out on the server: the template only draws these shapes."""

    width: int
    height: int
    rects: list[Rect]
    labels: list[Label]
    lines: list[Line]
    total: int


def _step(top: int, lines: int = 4) -> int:
    """A round gridline step (1, 2, 5 × 10^k) so that `lines` steps cover `top`."""
    raw = max(top, 1) / lines
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return max(int(m * power), 1)
    return max(int(10 * power), 1)


@dataclass
class _Frame:
    """A bar chart's plot area, y axis and gridlines, and where its n bars go."""

    left: float
    base: float  # the y of the zero line
    band: float
    bar: float
    scale: float  # pixels per unit
    every: int  # label every this many bars
    lines: list[Line]
    labels: list[Label]

    @classmethod
    def of(cls, peak: int, n: int, width: int, height: int) -> _Frame:
        left, right, top, bottom = 44.0, 8.0, 10.0, 26.0
        plot_w, plot_h = width - left - right, height - top - bottom
        step = _step(peak)
        ceiling = step * max(math.ceil(peak / step), 1)
        scale = plot_h / ceiling
        lines, labels = [], []
        for k in range(0, ceiling + 1, step):
            y = top + plot_h - k * scale
            lines.append(Line(left, y, width - right, y, "grid" if k else "base"))
            labels.append(Label(left - 6, y + 4, str(k), "end"))
        band = plot_w / max(n, 1)
        bar = max(band * 0.72, 1.0)
        every = max(math.ceil(n / 10), 1)
        return cls(left, top + plot_h, band, bar, scale, every, lines, labels)

    def x(self, i: int) -> float:
        """The left edge of bar i."""
        return self.left + i * self.band + (self.band - self.bar) / 2


def day_chart(counts: list[DayCount], *, width: int = 760, height: int = 240) -> Chart:
    """Stacked bars per day: accepted below, rejected above."""
    peak = max((c.accepted + c.rejected for c in counts), default=0)
    f = _Frame.of(peak, len(counts), width, height)
    rects: list[Rect] = []
    for i, c in enumerate(counts):
        x, scale, bar = f.x(i), f.scale, f.bar
        base = f.base
        day = c.day.isoformat()
        if c.accepted:
            h = c.accepted * scale
            rects.append(Rect(x, base - h, bar, h, "acc", f"{day}: {c.accepted} accepted"))
            base -= h
        if c.rejected:
            h = c.rejected * scale
            rects.append(Rect(x, base - h, bar, h, "rej", f"{day}: {c.rejected} rejected"))
        if (len(counts) - 1 - i) % f.every == 0:
            f.labels.append(Label(x + bar / 2, height - 8, c.day.strftime("%d %b")))
    total = sum(c.accepted + c.rejected for c in counts)
    return Chart(width, height, rects, f.labels, f.lines, total)


@dataclass(frozen=True)
class DirectionCount:
    sender: str
    recipient: str
    count: int
    offences: dict[str, int]


def directions(summary: Summary) -> list[DirectionCount]:
    """Accepted messages per direction (sender to one recipient), most first."""
    totals: Counter[tuple[str, str]] = Counter()
    offences: dict[tuple[str, str], Counter[str]] = {}
    for v in summary.volume:
        totals[(v.sender, v.recipient)] += v.count
        offences.setdefault((v.sender, v.recipient), Counter())[v.offence] += v.count
    return [
        DirectionCount(s, r, n, dict(offences[(s, r)].most_common()))
        for (s, r), n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def direction_chart(rows: list[DirectionCount], *, width: int = 760, limit: int = 25) -> Chart:
    """Horizontal bars, one per direction."""
    shown = rows[:limit]
    left, right, band = 190.0, 56.0, 28.0
    height = int(band * max(len(shown), 1) + 8)
    peak = max((r.count for r in shown), default=0) or 1
    scale = (width - left - right) / peak
    rects, labels = [], []
    for i, r in enumerate(shown):
        y = 4 + i * band
        w = max(r.count * scale, 2.0)
        name = f"{r.sender} → {r.recipient}"
        rects.append(Rect(left, y + 5, w, band - 10, "acc", f"{name}: {r.count} accepted"))
        labels.append(Label(left - 8, y + band / 2 + 4, name, "end", "name"))
        labels.append(Label(left + w + 6, y + band / 2 + 4, str(r.count), "start", "value"))
    return Chart(width, height, rects, labels, [], sum(r.count for r in rows))


@dataclass(frozen=True)
class AgreementView:
    """One agreement's page: volume per day and by direction, rejections, delays."""

    item: AgreementItem
    days: int
    first: date
    today: date
    counts: list[DayCount]
    day_chart: Chart
    directions: list[DirectionCount]
    direction_chart: Chart
    summary: Summary


async def agreement_view(
    session: AsyncSession, caller: Caller, agreement_id: str, *, days: int, today: date
) -> AgreementView:
    """The last `days` days (one of PERIODS) of an agreement the auditor oversees a party of."""
    if days not in PERIODS:
        raise BadFilter(f"the period is one of {', '.join(map(str, PERIODS))} days")
    item = await agreement_for(session, caller, agreement_id)
    counts = await daily_volume(session, caller, item.id, days=days, today=today)
    first = today - timedelta(days=days - 1)
    summary = await auditor.summary(
        session, caller, EventFilter(agreement=item.id, since=midnight(first))
    )
    by_direction = directions(summary)
    return AgreementView(
        item=item,
        days=days,
        first=first,
        today=today,
        counts=counts,
        day_chart=day_chart(counts),
        directions=by_direction,
        direction_chart=direction_chart(by_direction),
        summary=summary,
    )


# --- the transparency log ------------------------------------------------------------------


@dataclass(frozen=True)
class LogState:
    size: int
    root: str
    created_at: datetime
    note: str
    key: str
    pending: int
    oldest_pending: datetime | None


async def log_state(session: AsyncSession) -> LogState | None:
    """The latest checkpoint, the verifier key and the sequencer's backlog; None before any."""
    head = await audit_repo.latest_checkpoint(session)
    if head is None:
        return None
    pending, oldest = await audit_repo.backlog(session)
    return LogState(
        size=head.size,
        root=log.b64(head.root_hash),
        created_at=head.created_at,
        note=head.note,
        key=log.verifier_key(),
        pending=pending,
        oldest_pending=oldest,
    )


@dataclass(frozen=True)
class RunView:
    """A full verification run as the page shows it."""

    id: str
    tree_size: int
    root: str
    status: str
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    code: str | None
    message: str | None
    lines: list[str]

    @property
    def running(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def elapsed_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


def _run_view(run: VerificationRun) -> RunView:
    return RunView(
        id=str(run.id),
        tree_size=run.tree_size,
        root=log.b64(run.root_hash),
        status=run.status,
        requested_by=run.requested_by,
        requested_at=run.requested_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        attempts=run.attempts,
        code=run.code,
        message=run.message,
        lines=[str(line) for line in run.report or []],
    )


@dataclass(frozen=True)
class FullVerification:
    """What the page shows of full verification: the run to show, and the log's size now.

    `started`: this click started the run. `next_at`: a click before then shows the last run
    instead of starting one (`BROKER_CONSOLE_VERIFY_INTERVAL_S`).
    """

    run: RunView | None
    current_size: int | None
    started: bool = False
    next_at: datetime | None = None

    @property
    def grown(self) -> int:
        """How many leaves the log has gained since the run's checkpoint."""
        if self.run is None or self.current_size is None:
            return 0
        return max(self.current_size - self.run.tree_size, 0)


@dataclass(frozen=True)
class Verification:
    """The outcome of "verify now": the verifier's report, or its failure code and message.

    The quick checks run in the request; `full` asks for a full verification, which runs in
    the background (`run_pending`) and is shown by `full_run`.
    """

    ok: bool
    code: str | None
    message: str
    lines: list[str]
    full: bool
    index: int | None
    since: int | None
    elapsed_ms: int
    full_run: FullVerification | None = None


def _require_all_agencies(caller: Caller) -> None:
    if log.visible_agencies(caller) is not None:
        raise Forbidden(
            "full verification reads every leaf: it needs an auditor who oversees every agency"
        )


async def verify_now(
    session: AsyncSession,
    caller: Caller,
    *,
    full: bool,
    index: int | None,
    since: int | None,
) -> Verification:
    """Run the verifier's quick checks on this broker's log now; with `full`, ask for a full run.

    The quick checks read what the auditor's token may read: the checkpoint's signature, its
    consistency with the checkpoint of size `since` (the one the page showed) and the
    inclusion of leaf `index`; they cost O(log n) node reads. The full verification reads
    every leaf and node, so it runs in the background, at most one at a time, and its result
    is kept (`request_full`). The click is recorded as one `audit.queried` event.
    """
    if full:
        _require_all_agencies(caller)
    started = time.perf_counter()
    previous = await audit_repo.checkpoint(session, since) if since else None
    try:
        report = await log.verify_stored(
            session,
            caller=caller,
            index=index,
            previous=previous.note if previous is not None else None,
        )
        ok, code, message, lines = True, None, "", str(report).splitlines()
    except verify.VerifyError as exc:
        ok, code, message, lines = False, exc.code, str(exc), []
    elapsed = int((time.perf_counter() - started) * 1000)
    full_run = await request_full(session, caller) if full else None
    details: dict[str, Any] = {
        "query": "console.verify",
        "full": full,
        "index": index,
        "since": since,
        "result": "ok" if ok else code,
    }
    if full_run is not None and full_run.run is not None:
        details.update(run=full_run.run.id, run_started=full_run.started)
    await audit.record(session, "audit.queried", actor=caller.actor, details=details)
    return Verification(ok, code, message, lines, full, index, since, elapsed, full_run)


# --- full verification in the background ---------------------------------------------------

VERIFY_JOB = "console.verify"  # the job's name: the Celery task's and the embedded ticker's
MAX_ATTEMPTS = 2  # a run whose worker died is taken over once, then given up ("error")
# A running run's worker is presumed dead this long after its own timeout.
GRACE = timedelta(seconds=60)
KEEP_RUNS = timedelta(days=90)
MESSAGE_MAX = 2000


def _stale(run: VerificationRun, now: datetime) -> bool:
    """A `running` run whose worker has outlived its timeout and grace: it died."""
    limit = timedelta(seconds=settings().console_verify_timeout_s) + GRACE
    return run.status == "running" and (run.started_at is None or run.started_at + limit < now)


async def request_full(session: AsyncSession, caller: Caller) -> FullVerification:
    """Start a full verification of the latest checkpoint unless its result is already known.

    A click shows, without starting another run: the run in progress (queued or running); the
    last verdict when it is for the current tree size; or the last run while the interval
    since it has not passed. Otherwise it adds a `queued` run, which the background job takes
    after the commit. The unique `active` column admits one queued or running run in all, so
    two clicks at once start one run: the second insert does nothing and reads the first.
    """
    _require_all_agencies(caller)
    head = await log.latest(session)  # 404 before the first checkpoint
    now = utcnow()
    active = await repository.active_run(session)
    if active is not None:
        # Wake the job again: it takes over a run whose worker died, and a lost wake-up
        # (a Redis restart) costs this click nothing.
        jobs.after_commit(session, VERIFY_JOB)
        return FullVerification(_run_view(active), head.size)
    last = await repository.latest_finished(session)
    if last is not None:
        if last.tree_size == head.size and last.status in ("ok", "failed"):
            return FullVerification(_run_view(last), head.size)
        next_at = _next_at(last)
        if next_at > now:
            return FullVerification(_run_view(last), head.size, next_at=next_at)
    await repository.purge_runs(session, now - KEEP_RUNS)
    started = await repository.add_run(
        session,
        {
            "id": new_id(),
            "tree_size": head.size,
            "root_hash": head.root_hash,
            "status": "queued",
            "active": True,
            "requested_by": caller.actor,
            "requested_at": now,
            "attempts": 0,
            "report": [],
        },
    )
    if started:
        jobs.after_commit(session, VERIFY_JOB)
    run = await repository.active_run(session)  # ours, or the one a concurrent click started
    return FullVerification(_run_view(run) if run is not None else None, head.size, started)


async def full_status(session: AsyncSession, caller: Caller) -> FullVerification | None:
    """The run to show (the active one, else the last finished one); None for a bound auditor.

    Starts nothing. A queued run, or one whose worker died, gets a wake-up after the commit:
    the page's polling is the sweep that no run is left behind by a lost wake-up.
    """
    if log.visible_agencies(caller) is not None:
        return None
    size = await audit_repo.latest_size(session)
    now = utcnow()
    run = await repository.active_run(session)
    if run is not None:
        if run.status == "queued" or _stale(run, now):
            jobs.after_commit(session, VERIFY_JOB)
        return FullVerification(_run_view(run), size)
    last = await repository.latest_finished(session)
    if last is None:
        return FullVerification(None, size)
    next_at = _next_at(last)
    return FullVerification(_run_view(last), size, next_at=next_at if next_at > now else None)


def _next_at(last: VerificationRun) -> datetime:
    """When a run may start after `last` (`BROKER_CONSOLE_VERIFY_INTERVAL_S`)."""
    assert last.finished_at is not None
    return last.finished_at + timedelta(seconds=settings().console_verify_interval_s)


@dataclass(frozen=True)
class _Claim:
    id: uuid.UUID
    tree_size: int
    attempts: int
    requested_by: str


@dataclass(frozen=True)
class _Outcome:
    status: str
    code: str | None
    message: str | None
    lines: list[str]


async def _claim(session: AsyncSession, now: datetime) -> _Claim | None:
    """Take the queued run, or the running one whose worker died; None when there is none."""
    run = await repository.active_run(session)
    if run is None or (run.status == "running" and not _stale(run, now)):
        return None  # nothing to do, or its worker is on it
    if run.status == "running" and run.attempts >= MAX_ATTEMPTS:
        await _finish(
            session,
            _Claim(run.id, run.tree_size, run.attempts, run.requested_by),
            _Outcome("error", "abandoned", f"its worker stopped {run.attempts} times", []),
            now,
        )
        return None
    claim = _Claim(run.id, run.tree_size, run.attempts + 1, run.requested_by)
    taken = await repository.update_run(
        session,
        run.id,
        status=run.status,
        attempts=run.attempts,
        values={"status": "running", "attempts": claim.attempts, "started_at": now},
    )
    return claim if taken else None  # None: another worker took it first


async def _finish(session: AsyncSession, claim: _Claim, outcome: _Outcome, now: datetime) -> None:
    """Store the outcome, unless the run was taken over meanwhile; record it on the log."""
    done = await repository.update_run(
        session,
        claim.id,
        status="running",
        attempts=claim.attempts,
        values={
            "status": outcome.status,
            "active": None,
            "finished_at": now,
            "code": outcome.code,
            "message": (outcome.message or "")[:MESSAGE_MAX] or None,
            "report": outcome.lines,
        },
    )
    if done:
        await audit.record(
            session,
            "audit.queried",
            actor=claim.requested_by,
            details={
                "query": "console.verify_full",
                "run": str(claim.id),
                "size": claim.tree_size,
                "result": outcome.status if outcome.code is None else outcome.code,
            },
        )


class PinnedLog:
    """`verify.LogSource` over this store at one signed checkpoint, a short transaction per read.

    Every leaf and node is read (no caller: the auditor who asked oversees every agency). One
    transaction per page, not one for the whole run: SQLite takes its write lock when a
    transaction begins (`broker.db`) and PostgreSQL would keep one snapshot open for minutes.
    Leaves and nodes below the pinned size never change, so the pages agree.
    """

    def __init__(self, session_factory: db.SessionFactory, note: str) -> None:
        self.session_factory = session_factory
        self.note = note

    async def checkpoint(self) -> str:
        return self.note

    async def inclusion(self, index: int, size: int) -> dict[str, Any]:
        async with self.session_factory() as session:
            return await log.StoredLog(session, None).inclusion(index, size)

    async def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        async with self.session_factory() as session:
            return await log.StoredLog(session, None).consistency(size1, size2)

    async def leaves(self, start: int, end: int) -> dict[str, Any]:
        async with self.session_factory() as session:
            return await log.StoredLog(session, None).leaves(start, end)

    async def nodes(self, level: int, start: int, end: int) -> dict[str, Any]:
        async with self.session_factory() as session:
            return await log.StoredLog(session, None).nodes(level, start, end)


async def _verify(session_factory: db.SessionFactory, claim: _Claim) -> _Outcome:
    """Verify the run's checkpoint in full, within the timeout; consistent with the last good run."""
    timeout = settings().console_verify_timeout_s
    try:
        async with asyncio.timeout(timeout):
            async with session_factory() as session:
                head = await audit_repo.checkpoint(session, claim.tree_size)
                good = await repository.latest_finished(session, statuses=("ok",))
                previous = (
                    await audit_repo.checkpoint(session, good.tree_size)
                    if good is not None and good.tree_size < claim.tree_size
                    else None
                )
            if head is None:
                return _Outcome(
                    "failed",
                    "bad_checkpoint",
                    f"no stored checkpoint of size {claim.tree_size}",
                    [],
                )
            report = await verify.verify_source(
                PinnedLog(session_factory, head.note),
                log.verifier_key(),
                previous=previous.note if previous is not None else None,
                full=True,
            )
    except verify.VerifyError as exc:
        return _Outcome("failed", exc.code, str(exc), [])
    except TimeoutError:
        return _Outcome("error", "timeout", f"stopped after {timeout} s without a verdict", [])
    return _Outcome("ok", None, None, str(report).splitlines())


async def run_pending(session_factory: db.SessionFactory) -> int:
    """The background job: run the queued full verification, if any; returns how many ran.

    Idempotent: the run is claimed by a compare-and-set on (status, attempts) and its result
    written the same way, so a duplicate task does nothing and a worker that lost the run (it
    outlived its timeout and was taken over) cannot overwrite the new attempt's result. A run
    whose worker died stays `running` until `_stale`; the next job run (woken by a click or by
    the page's polling) takes it over, or marks it `error` after MAX_ATTEMPTS.
    """
    async with session_factory() as session:
        claim = await _claim(session, utcnow())
    if claim is None:
        return 0
    outcome = await _verify(session_factory, claim)
    async with session_factory() as session:
        await _finish(session, claim, outcome, utcnow())
    return 1


# --- sessions ------------------------------------------------------------------------------


class SessionExpired(BrokerError, code="console.session_expired"): ...


class SessionEnded(BrokerError, code="console.session_ended"): ...


class BadFormToken(BrokerError, code="console.form_token"): ...


SESSION_ID_MAX = 64  # token_urlsafe(32) is 43 characters


def session_hash(session_id: str) -> str:
    """What is stored of a session id: its SHA-256 (the id is 256 random bits, no KDF needed)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def form_token(session_id: str) -> str:
    """The session's anti-forgery token for the console's forms: an HMAC of its id.

    Derived, not stored: only someone holding the session id (an HttpOnly cookie) or a page
    rendered for it can present it, and it ends with the session.
    """
    pepper = settings().token_pepper.encode()
    mac = hmac.new(pepper, b"console-form\x00" + session_id.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def check_form_token(session_id: str, presented: str) -> None:
    """Refuse a form whose token is not this session's (403 `console.form_token`)."""
    if not hmac.compare_digest(form_token(session_id).encode(), presented.encode()):
        raise BadFormToken("the form is missing this session's token: reload the page")


async def open_session(
    session: AsyncSession, caller: Caller, token: str, *, replacing: str | None = None
) -> str:
    """Sign `caller` in: a new session bound to `caller` and its `token`; returns the session id.

    `caller` has just authenticated with `token`. `replacing` is the session id the browser
    held, ended here: every sign-in gets a new id. Sessions past their absolute limit are
    deleted on the way. The id is returned once; the database keeps its hash.
    """
    found = await auth_repo.credential_by_hash(session, auth.hash_token(token))
    credential, principal = exists(found, "credential for this token")
    now = utcnow()
    if replacing:
        await close_session(session, replacing)
    await repository.purge_sessions(
        session, now - timedelta(seconds=settings().console_session_max_s)
    )
    session_id = secrets.token_urlsafe(32)
    row = ConsoleSession(
        id=new_id(),
        session_hash=session_hash(session_id),
        principal_id=principal.id,
        credential_id=credential.id,
        created_at=now,
        last_seen_at=now,
        revoked_at=None,
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={
            "query": "console.sign_in",
            "session": str(row.id),
            "credential": str(credential.id),
        },
    )
    return session_id


async def authenticate_session(
    session: AsyncSession, session_id: str, *, slide: bool = True
) -> Caller:
    """The auditor of a console session, or 401 with a precise code; `slide`s the idle limit.

    Refused: an unknown id, a session signed out (`console.session_ended`), a token since
    revoked or expired or a principal disabled (the `auth.*` codes, as for the API), and a
    session idle or open too long (`console.session_expired`). Only auditors hold sessions.
    """
    if not session_id or len(session_id) > SESSION_ID_MAX:
        raise Unauthenticated("no console session")
    found = await repository.session_by_hash(session, session_hash(session_id))
    if found is None:
        raise Unauthenticated("unknown console session")
    if found.revoked_at is not None:
        raise SessionEnded("this console session was signed out")
    now = utcnow()
    caller = auth.caller_of(found.token, now)
    cfg = settings()
    if found.created_at + timedelta(seconds=cfg.console_session_max_s) <= now:
        raise SessionExpired("this console session reached its time limit")
    if found.last_seen_at + timedelta(seconds=cfg.console_session_idle_s) <= now:
        raise SessionExpired("this console session was idle too long")
    if caller.role is not Role.auditor:
        raise Forbidden("only auditors hold console sessions")
    if slide:
        await repository.touch(session, found.id, now)
    return caller


async def close_session(session: AsyncSession, session_id: str) -> None:
    """Sign out: end the session server-side (whatever state it is in) and record it."""
    if not session_id or len(session_id) > SESSION_ID_MAX:
        return
    found = await repository.session_by_hash(session, session_hash(session_id))
    if found is None or not await repository.revoke(session, found.id, utcnow()):
        return
    await audit.record(
        session,
        "audit.queried",
        actor=f"{found.token.role}:{found.token.name}",
        details={"query": "console.sign_out", "session": str(found.id)},
    )


# --- operation results ---------------------------------------------------------------------


class NoSuchOperation(NotFound):
    """An operation the auditor oversees no member of, or no operation at all (alike)."""


@dataclass(frozen=True)
class Bar:
    """One bar of a results chart, linked to the feedback behind it."""

    x: float
    y: float
    w: float
    h: float
    title: str
    href: str


@dataclass(frozen=True)
class LinkedChart:
    """An SVG bar chart whose bars link to the feedback they count (no script needed)."""

    width: int
    height: int
    bars: list[Bar]
    labels: list[Label]
    lines: list[Line]
    total: int


def _feedback_href(operation_id: str, figure: dict[str, str]) -> str:
    return f"/console/operations/{operation_id}/feedback?{urlencode(figure)}"


def _spelled(dimension: str, value: str | None) -> str:
    """A figure's value as the feedback listing takes it (absent values have a name)."""
    if value is not None:
        return value
    return results_service.OUTSIDE if dimension == "phase" else results_repo.NONE


def bars_chart(
    rows: list[tuple[str, int, str]], *, width: int = 400, limit: int = 30
) -> LinkedChart:
    """Horizontal bars (label, count, link), in the order given; sized for a column card."""
    shown = rows[:limit]
    left, right, band = 130.0, 44.0, 26.0
    height = int(band * max(len(shown), 1) + 8)
    peak = max((n for _, n, _ in shown), default=0) or 1
    scale = (width - left - right) / peak
    bars, labels = [], []
    for i, (name, n, href) in enumerate(shown):
        y = 4 + i * band
        w = max(n * scale, 2.0)
        bars.append(Bar(left, y + 5, w, band - 10, f"{name}: {n} feedback", href))
        labels.append(Label(left - 8, y + band / 2 + 4, name, "end", "name"))
        labels.append(Label(left + w + 6, y + band / 2 + 4, str(n), "start", "value"))
    return LinkedChart(width, height, bars, labels, [], sum(n for _, n, _ in rows))


def columns_chart(
    rows: list[tuple[str, int, str]], *, width: int = 760, height: int = 220
) -> LinkedChart:
    """Vertical bars (label, count, link) in time order: feedback per ISO week."""
    f = _Frame.of(max((n for _, n, _ in rows), default=0), len(rows), width, height)
    bars: list[Bar] = []
    for i, (name, n, href) in enumerate(rows):
        x, h = f.x(i), n * f.scale
        bars.append(Bar(x, f.base - h, f.bar, h, f"{name}: {n} feedback", href))
        if i % f.every == 0:
            label = name[-3:] if len(rows) > 12 else name
            f.labels.append(Label(x + f.bar / 2, height - 8, label))
    return LinkedChart(width, height, bars, f.labels, f.lines, sum(n for _, n, _ in rows))


@dataclass(frozen=True)
class GroupRow:
    """One row of the grouped counts, with the link to its feedback."""

    values: dict[str, str | None]
    count: int
    href: str


@dataclass(frozen=True)
class OperationResults:
    """An operation's results page: figures, charts, the grouped table, the phase selector."""

    results: ResultsOut
    charts: dict[str, LinkedChart]
    rows: list[GroupRow]
    more_rows: int
    phase_links: list[tuple[str, str, bool]]  # (label, href, active)
    csv_href: str
    feedback_href: str


RESULT_CHARTS = (
    ("phase", "Feedback by phase"),
    ("agency", "Feedback by sending agency"),
    ("outcome", "Feedback by outcome"),
    ("commodity", "Feedback by commodity"),
    ("quantity_band", "Feedback by quantity band"),
)
MAX_GROUP_ROWS = 200


async def result_operations(session: AsyncSession, caller: Caller) -> list[dict[str, Any]]:
    """The operations with a member the auditor oversees, for the results list."""
    ops = await agreements.list_operations(session)
    return [results_service.describe(op) for op in results_service.operations_seen(ops, caller)]


async def operation_results(
    session: AsyncSession, caller: Caller, operation_id: str, *, phase: str | None
) -> OperationResults:
    """One operation's results as the auditor may see them; 404 alike for unknown and unseen."""
    try:
        out = await results_service.results(session, caller, operation_id, phase=phase or None)
    except (NotFound, auditor.NotOverseen):
        raise NoSuchOperation(
            f"no operation {operation_id[:64]!r} with a member you oversee"
        ) from None
    op = out.operation
    base = {"phase": out.phase} if out.phase else {}

    def href(dimension: str, value: str | None) -> str:
        return _feedback_href(op, {**base, dimension: _spelled(dimension, value)})

    # Phases in the operation's order (then outside every phase); other values, most first.
    order = {p.name: i for i, p in enumerate(out.phases)}

    def rank(d: str, r: Rollup) -> tuple[int, str]:
        if d == "phase":
            return (order.get(r.value or "", len(order)), "")
        return (-r.count, r.value or "")

    charts: dict[str, LinkedChart] = {}
    for d, _ in RESULT_CHARTS:
        values: list[Rollup] = getattr(out, f"by_{d}")
        ranked = sorted(values, key=functools.partial(rank, d))
        charts[d] = bars_chart([(_spelled(d, r.value), r.count, href(d, r.value)) for r in ranked])
    charts["week"] = columns_chart(
        [(str(r.value), r.count, href("week", r.value)) for r in out.by_week]
    )
    ordered = sorted(out.groups, key=lambda g: -g.count)
    rows = [
        GroupRow(
            values={d: getattr(g, d) for d in results_service.DIMENSIONS},
            count=g.count,
            href=_feedback_href(
                op, {d: _spelled(d, getattr(g, d)) for d in results_service.DIMENSIONS}
            ),
        )
        for g in ordered[:MAX_GROUP_ROWS]
    ]
    phase_links = [("All phases", f"/console/operations/{op}", out.phase is None)]
    for p in out.phases:
        phase_links.append(
            (p.name, f"/console/operations/{op}?phase={p.name}", out.phase == p.name)
        )
    outside = results_service.OUTSIDE
    phase_links.append(
        ("Outside every phase", f"/console/operations/{op}?phase={outside}", out.phase == outside)
    )
    suffix = f"?{urlencode(base)}" if base else ""
    return OperationResults(
        results=out,
        charts=charts,
        rows=rows,
        more_rows=max(len(ordered) - MAX_GROUP_ROWS, 0),
        phase_links=phase_links,
        csv_href=f"/console/operations/{op}/results.csv{suffix}",
        feedback_href=_feedback_href(op, base),
    )


async def operation_results_csv(
    session: AsyncSession, caller: Caller, operation_id: str, *, phase: str | None
) -> str:
    """The results CSV of `GET /v1/operations/{id}/results.csv`, for the console's download."""
    try:
        return await results_service.results_csv(session, caller, operation_id, phase=phase or None)
    except (NotFound, auditor.NotOverseen):
        raise NoSuchOperation(
            f"no operation {operation_id[:64]!r} with a member you oversee"
        ) from None


async def operation_feedback(
    session: AsyncSession,
    caller: Caller,
    operation_id: str,
    figure: dict[str, str | None],
    *,
    cursor: str | None,
) -> tuple[FeedbackPage, str | None]:
    """The feedback behind a figure, a page at a time, and the link to the next page."""
    try:
        page = await results_service.feedback(
            session, caller, operation_id, figure, cursor=cursor, limit=PAGE
        )
    except (NotFound, auditor.NotOverseen):
        raise NoSuchOperation(
            f"no operation {operation_id[:64]!r} with a member you oversee"
        ) from None
    chosen = {k: v for k, v in figure.items() if v}
    more = (
        _feedback_href(operation_id, {**chosen, "cursor": page.next_cursor})
        if page.next_cursor
        else None
    )
    return page, more
