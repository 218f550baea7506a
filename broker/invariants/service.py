"""The fault-drill invariant checker (research 4.6): nothing lost, nothing doubled, all logged.

After a drill (or any bad day) this proves, from the database alone, what the broker promises:

- I1 no loss: every stored message has exactly one inbox entry per routed recipient, and every
  submission a client saw accepted (its history, optional) is stored;
- I2 no duplication: no second entry for a (message, recipient), and each inbox's numbers are
  exactly 1..n, so a cursor sees every entry once;
- I3 nothing unexpected: no entry for a recipient the message was not routed to;
- I5 audit exactly once: one `msg.accepted` per message (the event its receipt names), one
  `msg.delivered` per entry given an inbox number, one `msg.fetched` per first fetch, one
  `msg.acked` per distinct acknowledgement, one `msg.expired` per entry withdrawn at its `exp`, and, with a history, one `msg.rejected` per refusal it saw;
- I6 the log: every event has exactly one leaf, indexes are 0..n-1, each leaf is its event's
  canonical bytes, the latest checkpoint covers them all, and the offline verifier
  (`broker.audit.verify`, full mode) accepts the stored log with the broker's log key.

`wait_settled` retries until the relay and the sequencer have caught up (no queued delivery,
no pending outbox row, no unsequenced event) and fails when that takes longer than the
timeout (120 s by default, research I7), riding out a database that is restarting. The checker
only reads: one REPEATABLE READ snapshot on PostgreSQL, and it never records its own reads.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit import leaf, log, verify
from broker.audit import repository as audit_repo
from broker.audit.sequencer import epoch_ms
from broker.invariants import repository
from broker.invariants.repository import DeliveryRow, EventRow, MessageRow

SETTLE_TIMEOUT_S = 120.0
MAX_LISTED = 50  # violations listed per code; the count says how many there were


@dataclass(frozen=True)
class Violation:
    """One broken invariant: a stable code and what exactly is wrong."""

    code: str
    detail: str


@dataclass
class History:
    """What the clients saw (research 4.6), to check the record against; all optional.

    `accepted`: (sender, mid) of submissions answered 200/201. `refused`: per envelope SHA-256,
    how many submissions were answered with a recorded refusal (each leaves one
    `msg.rejected`). `unknown`: per envelope SHA-256, submissions that got no answer (a
    killed API): each may or may not have been recorded.
    """

    accepted: set[tuple[str, str]] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_jsonl(cls, lines: Iterable[str]) -> History:
        """Read `{"sender", "mid", "envelope_sha256", "outcome": ok|refused|unknown}` lines."""
        history = cls()
        for line in lines:
            if not line.strip():
                continue
            op = json.loads(line)
            if op["outcome"] == "ok":
                history.accepted.add((op["sender"], mid_of(op["mid"])))
            elif op["outcome"] == "refused":
                history.refused[op["envelope_sha256"]] += 1
            else:
                history.unknown[op["envelope_sha256"]] += 1
        return history


@dataclass
class Report:
    """The outcome of a check: counts, what is still in flight, and every violation."""

    counts: dict[str, int]
    pending: dict[str, int]
    violations: list[Violation]
    waited_s: float = 0.0
    attempts: int = 1

    @property
    def settled(self) -> bool:
        return not any(self.pending.values())

    @property
    def ok(self) -> bool:
        return self.settled and not self.violations

    def by_code(self) -> dict[str, int]:
        return dict(Counter(v.code for v in self.violations))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest (violations listed up to MAX_LISTED per code)."""
        listed: dict[str, list[str]] = defaultdict(list)
        for v in self.violations:
            if len(listed[v.code]) < MAX_LISTED:
                listed[v.code].append(v.detail)
        return {
            "ok": self.ok,
            "settled": self.settled,
            "waited_s": round(self.waited_s, 1),
            "attempts": self.attempts,
            "counts": self.counts,
            "pending": self.pending,
            "violations": self.by_code(),
            "details": dict(listed),
        }

    def __str__(self) -> str:
        lines = [
            "counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
            f"settled: {self.settled} after {self.waited_s:.1f} s ({self.attempts} looks)",
        ]
        if not self.settled:
            lines.append("pending: " + ", ".join(f"{k} {v}" for k, v in self.pending.items()))
        for code, details in self.summary()["details"].items():
            lines += [f"VIOLATION {code}: {d}" for d in details]
        return "\n".join(lines)


async def pending(session: AsyncSession) -> dict[str, int]:
    """Work the relay and the sequencer still owe (all zero when settled)."""
    return (await repository.backlog(session)).pending()


async def check(
    session: AsyncSession,
    history: History | None = None,
    *,
    log_key: str | None = None,
) -> Report:
    """Check every invariant on one snapshot of the database (read only)."""
    await repository.snapshot(session)
    messages = await repository.messages(session)
    deliveries = await repository.deliveries(session)
    events = await repository.events(session)
    found: list[Violation] = []
    found += _inboxes(messages, deliveries)
    found += _flow_events(messages, deliveries, events)
    if history is not None:
        found += _history(messages, events, history)
    found += await _log(session, events, log_key)
    backlog = await repository.backlog(session)
    if backlog.dead_outbox:
        found.append(Violation("outbox.dead", f"{backlog.dead_outbox} outbox rows dead-lettered"))
    kinds = Counter(e.kind for e in events)
    counts = {
        "messages": len(messages),
        "deliveries": len(deliveries),
        "events": len(events),
        **{kind.removeprefix("msg."): kinds[kind] for kind in repository.FLOW_KINDS},
        "leaves": sum(e.leaf_index is not None for e in events),
    }
    return Report(counts=counts, pending=backlog.pending(), violations=found)


async def wait_settled(
    session_factory: db.SessionFactory,
    history: History | None = None,
    *,
    timeout_s: float = SETTLE_TIMEOUT_S,
    every_s: float = 0.5,
    log_key: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Report:
    """Wait until the broker has caught up, then check; unsettled after `timeout_s` fails.

    A database that is away (restarting) is waited for within the same deadline.
    """
    start = clock()
    attempts = 0
    while True:
        attempts += 1
        try:
            async with session_factory() as session:
                settled = not any((await pending(session)).values())
            if settled or clock() - start >= timeout_s:
                async with session_factory() as session:
                    report = await check(session, history, log_key=log_key)
                if report.settled or clock() - start >= timeout_s:
                    report.waited_s, report.attempts = clock() - start, attempts
                    if not report.settled:
                        report.violations.append(_unsettled(report, timeout_s))
                    return report
        except DBAPIError as exc:  # a server down or restarting (db.py wraps failed connects)
            if clock() - start >= timeout_s:
                raise TimeoutError(
                    f"the database did not answer within {timeout_s:.0f} s ({_reason(exc)})"
                ) from exc
        await sleep(every_s)


def _reason(exc: Exception) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    lines = str(orig or exc).splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0]}"


def _unsettled(report: Report, timeout_s: float) -> Violation:
    owed = ", ".join(f"{k} {v}" for k, v in report.pending.items() if v)
    return Violation("unsettled", f"not settled within {timeout_s:.0f} s: {owed}")


# --- inboxes (I1-I3) -------------------------------------------------------------------------


def _inboxes(messages: list[MessageRow], deliveries: list[DeliveryRow]) -> list[Violation]:
    found: list[Violation] = []
    by_id = {m.id: m for m in messages}
    per_pair = Counter((d.message_id, d.recipient) for d in deliveries)
    for m in messages:
        for r in m.recipients:
            n = per_pair[(m.id, r)]
            if n == 0:
                found.append(
                    Violation("inbox.missing", f"{m.sender}/{m.mid} is not in {r}'s inbox")
                )
            elif n > 1:
                found.append(
                    Violation("inbox.duplicate", f"{m.sender}/{m.mid} is {n} times in {r}'s inbox")
                )
    for message_id, r in per_pair:
        routed = by_id.get(message_id)
        if routed is None or r not in routed.recipients:
            name = f"{routed.sender}/{routed.mid}" if routed else f"message {message_id}"
            found.append(
                Violation("inbox.unexpected", f"{name} is in {r}'s inbox, not routed there")
            )
    seqs: dict[str, list[int]] = defaultdict(list)
    for d in deliveries:
        if d.state == "queued":
            if d.inbox_seq is not None:
                found.append(
                    Violation("inbox.sequence", f"a queued entry of {d.recipient} has a number")
                )
        elif d.inbox_seq is not None:
            seqs[d.recipient].append(d.inbox_seq)
        elif d.state not in ("expired", "recalled"):  # withdrawn before the relay numbered it
            found.append(
                Violation("inbox.sequence", f"an available entry of {d.recipient} has no number")
            )
    for r, numbers in sorted(seqs.items()):
        numbers.sort()
        if numbers != list(range(1, len(numbers) + 1)):
            doubled = sorted(n for n, c in Counter(numbers).items() if c > 1)
            gaps = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
            found.append(
                Violation(
                    "inbox.sequence",
                    f"{r}'s inbox numbers are not 1..{len(numbers)}: "
                    f"doubled {doubled[:10]}, missing {gaps[:10]}",
                )
            )
    return found


# --- audit events of the message flow (I5) ---------------------------------------------------


def _key(e: EventRow, *names: str) -> tuple[str, ...]:
    return tuple(str(e.details.get(n)) for n in names)


def _flow_events(
    messages: list[MessageRow], deliveries: list[DeliveryRow], events: list[EventRow]
) -> list[Violation]:
    found: list[Violation] = []
    by_id = {m.id: m for m in messages}
    accepted: dict[tuple[str, ...], list[EventRow]] = defaultdict(list)
    delivered: Counter[tuple[str, ...]] = Counter()
    fetched: Counter[tuple[str, ...]] = Counter()
    acked: Counter[tuple[str, ...]] = Counter()
    expired: Counter[tuple[str, ...]] = Counter()
    for e in events:
        if e.kind == "msg.accepted":
            accepted[_key(e, "sender", "mid")].append(e)
        elif e.kind == "msg.delivered":
            delivered[_key(e, "sender", "mid", "recipient")] += 1
        elif e.kind == "msg.fetched":
            fetched[_key(e, "sender", "mid", "recipient")] += 1
        elif e.kind == "msg.acked":
            acked[_key(e, "sender", "mid", "recipient", "ack_sha256")] += 1
        elif e.kind == "msg.expired":
            expired[_key(e, "sender", "mid", "recipient")] += 1
    stored = {(m.sender, m.mid) for m in messages}
    for m in messages:
        got = accepted.get((m.sender, m.mid), [])
        if len(got) != 1:
            found.append(
                Violation("audit.accepted", f"{m.sender}/{m.mid}: {len(got)} msg.accepted")
            )
        elif got[0].id != m.event_id:
            found.append(
                Violation("audit.accepted", f"{m.sender}/{m.mid}: its receipt names another event")
            )
    for sender, mid in sorted(set(accepted) - stored):
        found.append(Violation("audit.phantom", f"msg.accepted for {sender}/{mid}, never stored"))
    pairs: set[tuple[str, ...]] = set()
    acked_pairs: dict[tuple[str, ...], str | None] = {}
    for d in deliveries:
        owner = by_id.get(d.message_id)
        if owner is None:
            continue
        pair: tuple[str, ...] = (owner.sender, owner.mid, d.recipient)
        pairs.add(pair)
        name = f"{owner.sender}/{owner.mid} -> {d.recipient}"
        want = 0 if d.inbox_seq is None else 1  # queued, or expired before the relay
        if delivered[pair] != want:
            found.append(
                Violation("audit.delivered", f"{name} ({d.state}): {delivered[pair]} msg.delivered")
            )
        if expired[pair] != (d.state == "expired"):
            found.append(
                Violation("audit.expired", f"{name} ({d.state}): {expired[pair]} msg.expired")
            )
        by_ack = d.acked_at is not None and d.fetched_at == d.acked_at
        if d.fetched_at is None and fetched[pair]:
            found.append(
                Violation("audit.fetched", f"{name}: never fetched, {fetched[pair]} msg.fetched")
            )
        elif d.fetched_at is not None and fetched[pair] != (0 if by_ack else 1):
            found.append(Violation("audit.fetched", f"{name}: {fetched[pair]} msg.fetched"))
        if d.acked_at is not None:
            acked_pairs[pair] = d.ack_sha256
            if not acked[(*pair, str(d.ack_sha256))]:
                found.append(Violation("audit.acked", f"{name}: its acknowledgement is not logged"))
    for key, n in acked.items():
        if key[:3] not in acked_pairs:
            found.append(
                Violation("audit.acked", f"msg.acked for {'/'.join(key[:3])}, never acknowledged")
            )
        elif n > 1:
            found.append(
                Violation(
                    "audit.acked", f"{'/'.join(key[:3])}: one acknowledgement logged {n} times"
                )
            )
    for key in sorted(set(delivered) - pairs):
        found.append(
            Violation("audit.phantom", f"msg.delivered for {'/'.join(key)}, no such entry")
        )
    for key in sorted(set(fetched) - pairs):
        found.append(Violation("audit.phantom", f"msg.fetched for {'/'.join(key)}, no such entry"))
    return found


def _history(
    messages: list[MessageRow], events: list[EventRow], history: History
) -> list[Violation]:
    found: list[Violation] = []
    stored = {(m.sender, m.mid) for m in messages}
    for sender, mid in sorted(history.accepted - stored):
        found.append(Violation("message.lost", f"{sender}/{mid} was accepted but is not stored"))
    rejected = Counter(
        str(e.details.get("envelope_sha256")) for e in events if e.kind == "msg.rejected"
    )
    # Refusals beyond a principal's leaf budget are counted in `audit.summarised` leaves, by
    # reason but not by envelope (broker/audit/budget.py): per envelope only the upper bound
    # holds then, and the totals must still add up.
    summarised = sum(
        row["count"]
        for e in events
        if e.kind == "audit.summarised"
        for row in e.details.get("counts", [])
        if row.get("kind") == "msg.rejected"
    )
    for digest, n in history.refused.items():
        most = n + history.unknown[digest]
        least = n if not summarised else 0
        if not least <= rejected[digest] <= most:
            found.append(
                Violation(
                    "audit.rejected",
                    f"envelope {digest}: refused {n} times, {rejected[digest]} msg.rejected",
                )
            )
    if summarised:  # the summaries may count other clients' refusals too: a lower bound
        refused = sum(history.refused.values())
        logged = sum(rejected[d] for d in history.refused)
        if logged + summarised < refused:
            found.append(
                Violation(
                    "audit.rejected",
                    f"refused {refused} times, {logged} msg.rejected + {summarised} summarised",
                )
            )
    return found


# --- the log (I6) ----------------------------------------------------------------------------


async def _log(
    session: AsyncSession, events: list[EventRow], log_key: str | None
) -> list[Violation]:
    found: list[Violation] = []
    by_index = {e.leaf_index: e for e in events if e.leaf_index is not None}
    indexes = sorted(by_index)
    if indexes != list(range(len(indexes))):
        found.append(Violation("log.index", f"event leaf indexes are not 0..{len(indexes) - 1}"))
    stored = await repository.leaves(session)
    if [i for i, _, _ in stored] != list(range(len(stored))):
        found.append(Violation("log.index", f"stored leaves are not 0..{len(stored) - 1}"))
    if len(stored) != len(indexes):
        found.append(
            Violation("log.index", f"{len(stored)} leaves stored, {len(indexes)} events sequenced")
        )
    for index, event_id, data in stored:
        e = by_index.get(index)
        if e is None or e.id != event_id:
            found.append(Violation("log.leaf", f"leaf {index} is not the event given that index"))
            continue
        expected = leaf.leaf_bytes(
            kind=e.kind,
            index=index,
            ts=epoch_ms(e.created_at),
            actor=e.actor,
            subject=e.subject,
            details=e.details or {},
        )
        if data != expected:
            found.append(Violation("log.leaf", f"leaf {index} differs from its event ({e.kind})"))
    size = await audit_repo.latest_size(session)
    if stored and size != len(stored):
        found.append(
            Violation("log.checkpoint", f"latest checkpoint size {size}, {len(stored)} leaves")
        )
    if stored and size:
        try:
            # The offline verifier's own checks, on the stored log (it records nothing).
            await log.verify_stored(session, log_key, full=True)
        except verify.VerifyError as exc:
            found.append(Violation("log.verify", f"{exc.code}: {exc}"))
    return found


def mid_of(value: str | uuid.UUID) -> str:
    """The canonical text of a mid (histories may carry upper case)."""
    return str(uuid.UUID(str(value)))
