"""The leaf budget: how much refusals and auditors' queries may grow the log per principal.

Every refused submission (`msg.rejected`) and every auditor's or party's query or export
(`audit.queried`, `audit.exported`) used to be a leaf of its own, forever: a principal could
grow the log by its rate limit per minute. These *budgeted kinds* are now limited per actor
(the principal, `<role>:<name>`) and per clock minute (UTC, from the event's time):

- The first `BROKER_AUDIT_BUDGET_PER_MINUTE` (N) budgeted events of an actor in a minute are
  recorded one by one, as before.
- Beyond N, an event is not written as a leaf but counted, in the same transaction that would
  have written it, in `audit_budget_counts` under (actor, minute, kind, code, subject): the
  code is the refusal reason (`details.reason`), the query (`details.query`) or the export's
  format (`details.format`).
- Once the minute has closed (plus `GRACE` for transactions still committing), one
  `audit.summarised` event per actor and minute records those counts, and the rows it
  summarises are deleted in the same transaction: a crash or a second summariser leaves either
  the rows or the summary, never both and never neither.

So an actor adds at most N + 1 leaves of these kinds per minute, the summary holding how many
events of each kind and code it stands for, their subjects, first and last times. Every other
kind (accepted messages, deliveries, fetches, acknowledgements, registry and admin changes, the
summaries themselves) is never budgeted. The budget is applied inside
`broker.audit.service.record_many`, so call sites do not change.

Cost per budgeted event: one upsert on the actor's (actor, minute) row, returning its new
total, before the event's own INSERT; beyond the budget a second upsert instead of the INSERT.
The upsert takes the row's lock, so concurrent requests of one actor on PostgreSQL count one
after the other (a request waits at most for the other's commit); SQLite has one writer.

Who writes the summaries: the log sequencer's job (`broker.audit.jobs`), which runs on its
interval in both profiles (the embedded ticker, Celery beat), checks once per minute, after the
grace, and writes them in a transaction of their own; only one summariser runs at a time
(a PostgreSQL try-lock). A row committed after its window was summarised (a transaction
open longer than the grace) is summarised on the next run, in a second summary for that
window: nothing is lost, at the price of one more leaf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker.audit import repository
from broker.config import settings

if TYPE_CHECKING:
    from broker.audit.service import NewEvent

# Budgeted kind -> the detail that is its code in the counts.
BUDGETED: Mapping[str, str] = {
    "msg.rejected": "reason",
    "audit.queried": "query",
    "audit.exported": "format",
}
SUMMARY_KIND = "audit.summarised"
WINDOW = timedelta(minutes=1)
# A window is summarised this long after it closed: time for transactions counting into it
# to commit (a request's transaction is far shorter).
GRACE = timedelta(seconds=5)
CODE_MAX = 64  # the key columns' lengths
SUBJECT_MAX = 120
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def window_of(moment: datetime) -> datetime:
    """The start of the UTC minute holding `moment`."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def next_summary(now: datetime) -> datetime:
    """When the window holding `now` can be summarised."""
    return window_of(now) + WINDOW + GRACE


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS  # exact floor, as leaves' `ts`


def _code(e: NewEvent) -> str:
    value = e.details.get(BUDGETED[e.kind])
    return "" if value is None else str(value)[:CODE_MAX]


async def admit(session: AsyncSession, events: Sequence[NewEvent]) -> list[NewEvent]:
    """The events to record as leaves; budgeted events beyond the budget are counted instead."""
    limit = settings().audit_budget_per_minute
    kept: list[NewEvent] = []
    groups: dict[tuple[str, datetime], list[NewEvent]] = {}
    for e in events:
        if e.kind in BUDGETED:
            groups.setdefault((e.actor, window_of(e.created_at)), []).append(e)
        else:
            kept.append(e)
    over: dict[tuple[str, datetime, str, str, str], dict[str, Any]] = {}
    # Sorted: two transactions taking several actors' rows take them in the same order.
    for (actor, start), batch in sorted(groups.items(), key=lambda item: item[0]):
        used = await repository.use_budget(session, actor, start, len(batch))
        room = max(0, limit - (used - len(batch)))
        kept += batch[:room]
        for e in batch[room:]:
            subject = (e.subject or "")[:SUBJECT_MAX]
            key = (actor, start, e.kind, _code(e), subject)
            row = over.setdefault(
                key,
                dict(zip(("actor", "window_start", "kind", "code", "subject"), key, strict=True))
                | {"count": 0, "first_at": e.created_at, "last_at": e.created_at},
            )
            row["count"] += 1
            row["first_at"] = min(row["first_at"], e.created_at)
            row["last_at"] = max(row["last_at"], e.created_at)
    await repository.count_over_budget(session, list(over.values()))
    return kept


@dataclass(frozen=True)
class Summary:
    """The `audit.summarised` event of one actor's window."""

    actor: str
    subject: str | None
    details: dict[str, Any]


async def take_closed(session: AsyncSession, now: datetime) -> list[Summary]:
    """Delete the counts of the windows closed by `now` and return their summaries.

    The caller records the summaries in the same transaction, so the deletion and the
    summaries commit together or not at all.
    """
    if not await repository.lock_summariser(session):
        return []  # another summariser is at it
    counts, used = await repository.take_closed_budgets(session, now - WINDOW - GRACE)
    by_window: dict[tuple[str, datetime], list[dict[str, Any]]] = {}
    subjects: dict[tuple[str, datetime], set[str]] = {}
    for actor, start, kind, code, subject, n, first, last in counts:
        by_window.setdefault((actor, start), []).append(
            {
                "kind": kind,
                "code": code,
                "subject": subject or None,
                "count": int(n),
                "first_ts": _ms(first),
                "last_ts": _ms(last),
            }
        )
        subjects.setdefault((actor, start), set()).add(subject)
    out: list[Summary] = []
    for (actor, start), rows in sorted(by_window.items(), key=lambda item: item[0]):
        rows.sort(key=lambda r: (r["kind"], r["code"], r["subject"] or ""))
        summarised = sum(r["count"] for r in rows)
        # One subject for all: the summary is about it (and visible to whoever oversees it).
        common = subjects[(actor, start)]
        subject = (next(iter(common)) or None) if len(common) == 1 else None
        details = {
            "window_start": _ms(start),
            "window_end": _ms(start + WINDOW),
            "recorded": max(0, used.get((actor, start), summarised) - summarised),
            "summarised": summarised,
            "counts": rows,
        }
        out.append(Summary(actor=actor, subject=subject, details=details))
    return out
