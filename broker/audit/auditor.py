"""The auditor's tools: event queries, per-agreement summaries and verifiable exports.

Every query and export is itself an audit event (`audit.queried`, `audit.exported`), recorded in
the request's transaction before any data leaves. An auditor bound to some agencies sees only
events that name one of them (the rule of `broker.audit.log`).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit import log, repository
from broker.audit import service as audit
from broker.audit.models import AuditEvent
from broker.audit.repository import EventFilter
from broker.audit.schemas import (
    AckStats,
    Delays,
    EventOut,
    EventsPage,
    ReasonCount,
    Summary,
    VolumeRow,
)
from broker.auth.service import Caller
from broker.errors import BrokerError
from broker.ids import utcnow

MAX_PAGE = 500
EXPORT_PAGE = 500
EXPORT_FORMAT = "exchange-broker-audit-export/v1"
CSV_COLUMNS = (
    "record",
    "id",
    "created_at",
    "kind",
    "actor",
    "subject",
    "details",
    "leaf_index",
    "leaf",
    "proof",
)


class BadCursor(BrokerError, code="audit.bad_cursor"): ...


class NotOverseen(BrokerError, code="audit.not_overseen"): ...


class BadFilter(BrokerError, code="audit.bad_filter"): ...


ExportFormat = Literal["json", "csv"]


def scoped(caller: Caller, f: EventFilter) -> EventFilter:
    """The filter narrowed to what the auditor oversees (403 for an agency it does not)."""
    visible = log.visible_agencies(caller)
    if f.agency is not None and visible is not None and f.agency not in visible:
        raise NotOverseen(f"you do not oversee {f.agency}")
    if f.since is not None and f.until is not None and f.until <= f.since:
        raise BadFilter("`until` must be later than `since`")
    return EventFilter(**{**asdict(f), "visible": visible})


def _described(f: EventFilter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in asdict(f).items():
        if key == "visible" or value in (None, ()):
            continue
        out[key] = rfc3339(value) if isinstance(value, datetime) else value
    if "kinds" in out:
        out["kinds"] = list(out["kinds"])
    return out


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds, so an exported time maps exactly to the leaf's `ts`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def events(
    session: AsyncSession, caller: Caller, f: EventFilter, *, cursor: str | None, limit: int
) -> EventsPage:
    """One keyset page of events (metadata only), oldest first."""
    f = scoped(caller, f)
    after = _cursor(cursor)
    limit = min(max(limit, 1), MAX_PAGE)
    rows = await repository.events(session, f, after=after, limit=limit)
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={"query": "audit.events", "filters": _described(f), "returned": len(rows)},
    )
    items = [EventOut.model_validate(e) for e in rows]
    return EventsPage(items=items, next_cursor=str(rows[-1].id) if len(rows) == limit else None)


def _cursor(cursor: str | None) -> uuid.UUID | None:
    if not cursor:
        return None
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise BadCursor("the cursor is the `next_cursor` of the previous page") from None


def _delays(values: list[int]) -> Delays | None:
    if not values:
        return None
    values.sort()
    n = len(values)

    def rank(p: int) -> int:
        return values[max(0, -(-p * n // 100) - 1)]  # nearest rank

    return Delays(count=n, min=values[0], p50=rank(50), p90=rank(90), p99=rank(99), max=values[-1])


async def summary(session: AsyncSession, caller: Caller, f: EventFilter) -> Summary:
    """Volume by direction and offence, rejections by reason, delivery and acknowledgement delays."""
    f = scoped(caller, f)
    volume: Counter[tuple[str, str, str]] = Counter()
    mids: set[str] = set()
    accepted = 0
    async for _, d in repository.event_details(session, _with(f, kinds=("msg.accepted",))):
        accepted += 1
        mids.add(str(d.get("mid")))
        for recipient in d.get("recipients") or []:
            volume[(str(d.get("sender")), str(recipient), str(d.get("offence")))] += 1
    reasons: Counter[str] = Counter()
    async for _, d in repository.event_details(session, _with(f, kinds=("msg.rejected",))):
        reasons[str(d.get("reason"))] += 1
    # Deliveries and acknowledgements of the messages accepted in the period, whenever they came.
    later = _with(f, kinds=("msg.delivered", "msg.acked"), agreement=None, until=None)
    delivery: list[int] = []
    ack_delays: list[int] = []
    statuses: Counter[str] = Counter()
    async for kind, d in repository.event_details(session, later):
        if str(d.get("mid")) not in mids:
            continue
        delay = d.get("delay_ms")
        if kind == "msg.delivered":
            if isinstance(delay, int):
                delivery.append(delay)
            continue
        statuses[str(d.get("status"))] += 1
        if isinstance(delay, int):
            ack_delays.append(delay)
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={"query": "audit.summary", "filters": _described(f)},
    )
    return Summary(
        agreement=f.agreement,
        since=f.since,
        until=f.until,
        accepted=accepted,
        volume=[
            VolumeRow(sender=s, recipient=r, offence=o, count=n)
            for (s, r, o), n in sorted(volume.items())
        ],
        rejected=sum(reasons.values()),
        rejections=[ReasonCount(reason=r, count=n) for r, n in sorted(reasons.items())],
        delivery_delay_ms=_delays(delivery),
        acknowledgements=AckStats(
            count=sum(statuses.values()),
            by_status=dict(sorted(statuses.items())),
            delay_ms=_delays(ack_delays),
        ),
    )


def _with(f: EventFilter, **changes: Any) -> EventFilter:
    return EventFilter(**{**asdict(f), **changes})


@dataclass(frozen=True)
class ExportPlan:
    """What an export covers: the filter, and the checkpoint its proofs are against."""

    filter: EventFilter
    fmt: ExportFormat
    tree_size: int
    checkpoint: str
    log_key: str
    exported_at: datetime


async def start_export(
    session: AsyncSession, caller: Caller, f: EventFilter, fmt: ExportFormat
) -> ExportPlan:
    """Record the export (before any data leaves) and pin the checkpoint it proves against."""
    f = scoped(caller, f)
    head = await log.latest(session)
    await audit.record(
        session,
        "audit.exported",
        actor=caller.actor,
        details={"format": fmt, "filters": _described(f), "tree_size": head.size},
    )
    return ExportPlan(f, fmt, head.size, head.note, log.verifier_key(), utcnow())


async def _pages(
    factory: db.SessionFactory, plan: ExportPlan
) -> AsyncIterator[list[dict[str, Any]]]:
    after: uuid.UUID | None = None
    while True:
        async with factory() as session:
            rows = await repository.events(session, plan.filter, after=after, limit=EXPORT_PAGE)
            proven = [
                e.leaf_index
                for e in rows
                if e.leaf_index is not None and e.leaf_index < plan.tree_size
            ]
            data = await repository.leaves_by_index(session, proven)
            proofs = await log.inclusion_proofs(session, proven, plan.tree_size)
            page = [_exported(e, data, proofs) for e in rows]
        if page:
            yield page
        if len(rows) < EXPORT_PAGE:
            return
        after = rows[-1].id


def _exported(
    e: AuditEvent, data: dict[int, bytes], proofs: dict[int, list[bytes]]
) -> dict[str, Any]:
    index = e.leaf_index
    proven = index is not None and index in proofs and index in data
    return {
        "id": str(e.id),
        "created_at": rfc3339(e.created_at),
        "kind": e.kind,
        "actor": e.actor,
        "subject": e.subject,
        "details": e.details,
        "leaf_index": index,
        "leaf": log.b64(data[index]) if proven and index is not None else None,
        "proof": [log.b64(h) for h in proofs[index]] if proven and index is not None else None,
    }


def export_chunks(factory: db.SessionFactory, plan: ExportPlan) -> AsyncIterator[bytes]:
    """The export, streamed page by page, each page read in its own short transaction."""
    if plan.fmt == "csv":
        return _csv(factory, plan)
    return _json(factory, plan)


async def _json(factory: db.SessionFactory, plan: ExportPlan) -> AsyncIterator[bytes]:
    head = {
        "format": EXPORT_FORMAT,
        "exported_at": rfc3339(plan.exported_at),
        "log_key": plan.log_key,
        "checkpoint": plan.checkpoint,
        "tree_size": plan.tree_size,
        "filters": _described(plan.filter),
    }
    yield (json.dumps(head, ensure_ascii=False)[:-1] + ',"events":[').encode()
    count = 0
    async for page in _pages(factory, plan):
        parts = [json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in page]
        yield ((",\n" if count else "\n") + ",\n".join(parts)).encode()
        count += len(page)
    yield f'\n],"count":{count}}}\n'.encode()


def _csv_lines(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


def _csv_row(item: dict[str, Any]) -> list[Any]:
    return [
        "event",
        item["id"],
        item["created_at"],
        item["kind"],
        item["actor"],
        item["subject"] or "",
        json.dumps(item["details"], ensure_ascii=False, separators=(",", ":")),
        "" if item["leaf_index"] is None else item["leaf_index"],
        item["leaf"] or "",
        " ".join(item["proof"] or []),
    ]


async def _csv(factory: db.SessionFactory, plan: ExportPlan) -> AsyncIterator[bytes]:
    # First a header, then one `checkpoint` record (the signed note in `details`, the tree size
    # in `leaf_index`, the log key in `subject`), then one `event` record per event.
    checkpoint = [
        "checkpoint",
        "",
        rfc3339(plan.exported_at),
        EXPORT_FORMAT,
        "",
        plan.log_key,
        plan.checkpoint,
        plan.tree_size,
        "",
        "",
    ]
    yield _csv_lines([CSV_COLUMNS, checkpoint])
    async for page in _pages(factory, plan):
        yield _csv_lines([_csv_row(item) for item in page])
