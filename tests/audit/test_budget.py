"""The leaf budget: refusals and auditors' queries grow the log by at most N + 1 leaves per
principal per minute, and the summary of each minute counts everything beyond N by code.

The clock of the audit service is pinned (`clock`), so a flood lands in one minute however
long the test takes; the app's ticker is idle (`api`), so summaries and leaves are written only
when a test asks (`service.summarise`, `sequence_all`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import config, db
from broker.audit import budget, service
from broker.audit.models import AuditEvent, BudgetCount, BudgetWindow
from broker.ids import utcnow
from tests.audit.conftest import scalar, scalars, sequence_all
from tests.conftest import bearer
from tests.messages.conftest import Exchange, register_world_keys

FP = "VN-GDC/fp-hcm-01"
OTHER_FP = "HK-CED/fp-01"


class Clock:
    """The audit service's `utcnow`: ten seconds into the current minute until moved."""

    def __init__(self) -> None:
        self.now = budget.window_of(utcnow()) + timedelta(seconds=10)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(service, "utcnow", c)
    return c


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """`limit(n)` sets the budget for this test."""

    def set_limit(n: int) -> None:
        monkeypatch.setattr(config.settings(), "audit_budget_per_minute", n)

    return set_limit


@pytest.fixture
def ex(api: Any, world: dict[str, Any], token_for: Any) -> Exchange:
    """The messaging harness over the idle-ticker client."""
    return register_world_keys(Exchange(client=api, token_for=token_for), world)


def refuse(ex: Exchange, fp: str, n: int) -> Counter[str]:
    """`n` refused submissions by focal point `fp`, of two kinds; their problem codes."""
    codes: Counter[str] = Counter()
    routing = ex.routing(fp)
    signed = ex.envelope(routing)
    for i in range(n):
        if i % 3:
            response = ex.submit("not.an.envelope", routing, fp=fp)
        else:  # verified, so the refusal names the sender agency
            response = ex.submit(signed, routing, fp=fp, idempotency_key=None)
        assert 400 <= response.status_code < 500, response.text
        codes[response.json()["code"]] += 1
    return codes


def actor_of(fp_or_kind: str) -> str:
    """The actor of the (one) principal whose events are of that kind or name that sender."""
    actors = scalars(
        select(AuditEvent.actor)
        .where(AuditEvent.kind.in_(budget.BUDGETED))
        .where(
            (AuditEvent.kind == fp_or_kind)
            | (AuditEvent.details["sender_fp"].as_string() == fp_or_kind)
        )
        .distinct()
    )
    assert len(actors) == 1, actors
    return str(actors[0])


def leaves_of(actor: str) -> list[AuditEvent]:
    """The actor's events that have a leaf."""
    return scalars(
        select(AuditEvent)
        .where(AuditEvent.actor == actor, AuditEvent.leaf_index.is_not(None))
        .order_by(AuditEvent.leaf_index)
    )


def summaries(actor: str) -> list[dict[str, Any]]:
    return [e.details for e in leaves_of(actor) if e.kind == budget.SUMMARY_KIND]


def counted(details: dict[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for row in details["counts"]:
        out[row["code"]] += row["count"]
    return out


def summarise(at: datetime) -> int:
    return int(db.call(service.summarise, now=at))


def pending_rows() -> tuple[int, int]:
    """How many budget windows and counts await a summary."""
    windows = scalar(select(func.count()).select_from(BudgetWindow))
    counts = scalar(select(func.count()).select_from(BudgetCount))
    return int(windows), int(counts)


def test_200_refusals_in_a_minute_add_at_most_n_plus_one_leaves_all_counted(
    ex: Exchange, clock: Clock
) -> None:
    n = config.settings().audit_budget_per_minute
    sent = refuse(ex, FP, 200)
    actor = actor_of(FP)
    sequence_all()
    individual = leaves_of(actor)
    assert len(individual) == n  # the first N, one leaf each; the rest only counted
    assert {e.kind for e in individual} == {"msg.rejected"}

    # While the minute (and its grace) lasts, nothing is summarised.
    assert summarise(budget.next_summary(clock.now) - timedelta(microseconds=1)) == 0
    assert summarise(budget.next_summary(clock.now)) == 1
    sequence_all()
    leaves = leaves_of(actor)
    assert len(leaves) == n + 1
    (summary,) = summaries(actor)
    assert summary["summarised"] == 200 - n
    assert summary["recorded"] == n
    assert summary["window_start"] == budget._ms(budget.window_of(clock.now))
    assert summary["window_end"] - summary["window_start"] == 60_000
    # Every refusal is accounted for by its code: one leaf each, or counted in the summary.
    logged = Counter(e.details["reason"] for e in individual)
    assert logged + counted(summary) == sent
    # The verified refusals keep their subject (the sender agency), the others have none.
    assert {r["subject"] for r in summary["counts"]} == {"VN-GDC", None}
    assert pending_rows() == (0, 0)
    # The next minute has a budget of its own.
    clock.now += budget.WINDOW
    refuse(ex, FP, 2)
    sequence_all()
    assert len(leaves_of(actor)) == n + 3


def test_a_crash_between_counting_and_summarising_loses_nothing(
    clean_db: str, clock: Clock, limit: Callable[[int], None]
) -> None:
    limit(3)
    actor = "focal_point:crashy"
    events = [
        service.event("msg.rejected", actor=actor, details={"reason": f"envelope.c{i % 2}"})
        for i in range(10)
    ]
    for e in events:  # one transaction each, as requests are
        db.call(service.record_many, [e])
    assert len(scalars(select(AuditEvent).where(AuditEvent.actor == actor))) == 3
    assert pending_rows() == (1, 2)
    later = budget.next_summary(clock.now)

    class Crash(Exception): ...

    async def summarise_then_crash(s: AsyncSession) -> None:
        assert await service.summarise(s, now=later) == 1
        raise Crash  # after the summary and the deletions, before the commit

    with pytest.raises(Crash):
        db.call(summarise_then_crash)
    assert pending_rows() == (1, 2)  # rolled back: the counts are still there
    assert scalars(select(AuditEvent).where(AuditEvent.kind == budget.SUMMARY_KIND)) == []

    assert summarise(later) == 1
    assert summarise(later) == 0  # a retry finds nothing left: nothing counted twice
    assert summarise(later + timedelta(hours=1)) == 0
    sequence_all()
    (summary,) = summaries(actor)
    assert summary["summarised"] == 7
    assert summary["recorded"] == 3
    assert counted(summary) == Counter({"envelope.c1": 4, "envelope.c0": 3})  # events 3 to 9
    assert pending_rows() == (0, 0)


def test_accepted_messages_are_never_suppressed(
    ex: Exchange, clock: Clock, limit: Callable[[int], None]
) -> None:
    limit(3)
    refuse(ex, FP, 10)  # the budget is spent
    for _ in range(5):
        response, _, _ = ex.send(fp=FP)
        assert response.status_code == 201, response.text
    refuse(ex, FP, 2)
    sequence_all()
    actor = actor_of(FP)
    kinds = Counter(e.kind for e in leaves_of(actor))
    assert kinds == {"msg.rejected": 3, "msg.accepted": 5}
    assert summarise(budget.next_summary(clock.now)) == 1
    sequence_all()
    (summary,) = summaries(actor)
    assert summary["summarised"] == 9


def test_two_principals_have_separate_budgets(
    ex: Exchange, clock: Clock, limit: Callable[[int], None]
) -> None:
    limit(4)
    refuse(ex, FP, 12)
    refuse(ex, OTHER_FP, 6)
    auditor = bearer(ex.token_for("auditor"))
    for _ in range(7):
        assert ex.client.get("/v1/audit/events", headers=auditor).status_code == 200
    sequence_all()
    first, other, oversight = actor_of(FP), actor_of(OTHER_FP), actor_of("audit.queried")
    assert [len(leaves_of(a)) for a in (first, other, oversight)] == [4, 4, 4]
    assert summarise(budget.next_summary(clock.now)) == 3
    sequence_all()
    assert [s["summarised"] for a in (first, other, oversight) for s in summaries(a)] == [8, 2, 3]
    (queries,) = summaries(oversight)
    assert queries["counts"] == [
        {
            "kind": "audit.queried",
            "code": "audit.events",
            "subject": None,
            "count": 3,
            "first_ts": budget._ms(clock.now),
            "last_ts": budget._ms(clock.now),
        }
    ]


def test_concurrent_requests_of_one_principal_share_one_budget(
    clean_db: str, clock: Clock, limit: Callable[[int], None]
) -> None:
    """Twenty transactions at once: exactly N are logged, the rest counted (the upsert's lock)."""
    limit(5)
    actor = "auditor:parallel"

    async def one(i: int) -> None:
        async with db.session_scope() as s:
            await service.record(s, "audit.queried", actor=actor, details={"query": f"q{i % 2}"})
            await asyncio.sleep(0.01)  # hold the row while the others arrive

    async def many() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))

    db.run(many)
    assert len(scalars(select(AuditEvent).where(AuditEvent.actor == actor))) == 5
    assert summarise(budget.next_summary(clock.now)) == 1
    sequence_all()
    (summary,) = summaries(actor)
    assert summary["summarised"] == 15
    assert summary["recorded"] == 5


def test_other_kinds_are_never_budgeted(
    clean_db: str, clock: Clock, limit: Callable[[int], None]
) -> None:
    limit(1)
    actor = "admin:busy"
    db.call(
        service.record_many,
        [service.event("token.issued", actor=actor, details={"n": i}) for i in range(5)],
    )
    db.call(
        service.record_many,
        [service.event("audit.exported", actor=actor, details={"format": "csv"}) for _ in "abc"],
    )
    kinds = Counter(scalars(select(AuditEvent.kind).where(AuditEvent.actor == actor)))
    assert kinds == {"token.issued": 5, "audit.exported": 1}
    assert summarise(budget.next_summary(clock.now)) == 1
    assert summarise(budget.next_summary(clock.now)) == 0


@pytest.mark.postgres
def test_one_summariser_at_a_time(
    clean_db: str, clock: Clock, limit: Callable[[int], None]
) -> None:
    """A second summariser while the first is still open skips instead of splitting a window."""
    limit(1)
    for _ in range(3):
        db.call(service.record, "msg.rejected", actor="focal_point:x", details={"reason": "r"})
    later = budget.next_summary(clock.now)

    async def both() -> tuple[int, int]:
        async with db.session_scope() as first:
            a = await service.summarise(first, now=later)
            async with db.session_scope() as second:
                b = await service.summarise(second, now=later)
        return a, b

    assert db.run(both) == (1, 0)
    assert summarise(later) == 0


def test_the_sequencer_job_writes_the_summaries_once_a_minute_closed(
    clean_db: str, clock: Clock, limit: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job both profiles run (embedded ticker, Celery beat) summarises, then sequences."""
    from broker.audit import jobs

    limit(2)
    monkeypatch.setattr(jobs, "utcnow", clock)
    monkeypatch.setattr(jobs, "_next_summary", [None])
    actor = "agency:reader"
    for _ in range(5):
        db.call(service.record, "audit.queried", actor=actor, details={"query": "log.leaves"})
    assert sequence_all() == 2
    clock.now = budget.next_summary(clock.now)
    assert sequence_all() == 1  # the summary, written and sequenced in one run
    (summary,) = summaries(actor)
    assert summary["summarised"] == 3

    # A summariser that fails is logged and retried later; the log is still sequenced.
    def broken(*_: Any, **__: Any) -> int:
        raise RuntimeError("summariser down")

    db.call(service.record, "audit.queried", actor=actor, details={"query": "log.leaves"})
    clock.now += budget.WINDOW
    monkeypatch.setattr(service, "summarise", broken)
    assert sequence_all() == 1
