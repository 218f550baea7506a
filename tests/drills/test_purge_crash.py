"""Crash drills of the retention purge on the real stack: a Celery worker killed mid-batch.

Messages are submitted, relayed and acknowledged through the services (signed, encrypted
envelopes, signed acknowledgements), then made old by moving their acceptance time back in
the database, past every agreement's retention; a few stay recent and two are under a legal
hold. A production-profile Celery worker (prefork) runs `lifecycle.purge`:

- at the crash point: the worker's pool child freezes (SIGSTOP) inside its second purge
  transaction (the first, a whole batch, committed), after the envelopes and
  acknowledgements were emptied and before the commit; the drill reads the database while
  it hangs there, kills the worker's whole process group with SIGKILL, reads it again, then
  lets a fresh worker run the purge to the end;
- at a random moment: a plain worker is killed -9 somewhere in the purge (before, during or
  after a batch), then a fresh worker finishes.

After each kill: no message is half purged (`purged_at` set iff the envelope is empty iff the
recipients' acknowledgements are gone), and the committed `msg.purged` events name exactly
the purged messages, each once. At the end: every due message purged, the recent and held
ones untouched, every event sequenced, and the log's `msg.purged` leaves list each purged
message exactly once. PostgreSQL only (the production profile refuses SQLite).

    .venv/bin/pytest -q -n 0 tests/drills/test_purge_crash.py -p no:randomly
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit.models import AuditEvent, LogLeaf
from broker.auth.service import Caller, Role
from broker.config import settings
from broker.inbox import service as inbox
from broker.lifecycle import service as lifecycle
from broker.lifecycle.schemas import HoldIn
from broker.messages import service as messages
from broker.messages.models import Delivery, Message
from tests.drills.stack import DrillStack
from tests.inbox.conftest import HK, agency, focal_point, mekong
from tests.inbox.stack import wait_until
from tests.inbox.test_acks import signed_ack
from tests.inbox.test_crash import all_sequenced
from tests.messages.conftest import Exchange, relay

pytestmark = [pytest.mark.hostile, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

POINT = "lifecycle.purge_mid_batch"
# Past every retention of the demo world's agreements (the longest is ten years).
LONG_AGO = datetime.now(UTC) - timedelta(days=11 * 366)
# More than one batch, fewer than a batch per agreement (a quarter go under Mekong Dragon): the
# crash lands in the second transaction.
DUE = lifecycle.PURGE_BATCH * 13 // 10
RECENT = 12
HELD = 2
SETTLE_S = 90.0


@dataclass
class Book:
    """What the database says about each message of the drill, read in one transaction."""

    purged_at: dict[str, datetime | None]
    emptied: dict[str, bool]
    acks: dict[str, list[str | None]]
    events: Counter[str]  # mid -> how many committed `msg.purged` events name it


@dataclass
class Drill:
    due: set[str]
    kept: set[str]  # recent or held
    acked: set[str]  # every message: HK-CED acknowledged its copy


@pytest.fixture
def stack(keys: Exchange, redis_url: str, tmp_path: Path) -> Iterator[DrillStack]:
    cfg = settings()
    if not cfg.sqlalchemy_url.startswith("postgresql"):
        pytest.skip("the production profile runs on PostgreSQL")
    s = DrillStack(
        database_url=cfg.sqlalchemy_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        keys_dir=cfg.broker_keys_dir.resolve(),
    )
    try:
        yield s
    finally:
        s.close()


def prepare(ex: Exchange) -> Drill:
    """Messages acknowledged by HK-CED, then aged: DUE past retention, RECENT not, HELD held."""
    envelopes: dict[str, str] = {}
    for i in range(DUE + RECENT + HELD):
        routing = mekong(ex) if i % 4 == 0 else ex.routing()  # 3 deliveries or 1
        envelope = ex.envelope(routing)
        fp = focal_point(routing["sender_fp"])
        outcome = db.call(messages.submit, fp, envelope, routing["mid"])
        assert outcome.status == 201, outcome.refusal
        envelopes[routing["mid"]] = envelope
    relay()
    cursor: str | None = None
    while True:
        page = db.call(inbox.poll, agency(HK), cursor, 100)
        for item in page.items:
            mid = str(item.mid)
            ack = signed_ack(ex, HK, mid, envelopes[mid], "decrypted")
            db.call(inbox.acknowledge, agency(HK), item.mid, ack)
        if not page.items:
            break
        cursor = page.next_cursor
    mids = list(envelopes)
    recent, held, due = mids[:RECENT], mids[RECENT : RECENT + HELD], mids[RECENT + HELD :]
    aged = [uuid.UUID(m) for m in held + due]
    db.call(
        lambda s: s.execute(
            update(Message).where(Message.mid.in_(aged)).values(received_at=LONG_AGO)
        )
    )
    admin = Caller(principal_id=uuid.uuid4(), name="drill-admin", role=Role.admin)
    for mid in held:
        data = HoldIn(sender="VN-GDC", mid=uuid.UUID(mid), reason="MLA", reference="MLA-7")
        db.call(lifecycle.place_hold, admin, data)
    drill = Drill(due=set(due), kept=set(recent + held), acked=set(mids))
    assert drill.acked <= {m for m, acks in read().acks.items() if any(acks)}
    return drill


async def _read(s: AsyncSession) -> Book:
    await s.execute(text("set transaction isolation level repeatable read"))  # one snapshot
    rows = (await s.execute(select(Message.mid, Message.purged_at, Message.envelope))).all()
    acks: dict[str, list[str | None]] = {str(r.mid): [] for r in rows}
    for mid, ack in await s.execute(
        select(Message.mid, Delivery.ack).join(Delivery, Delivery.message_id == Message.id)
    ):
        acks[str(mid)].append(ack)
    events: Counter[str] = Counter()
    for details in await s.scalars(
        select(AuditEvent.details).where(AuditEvent.kind == "msg.purged")
    ):
        events.update(m["mid"] for m in details["messages"])
    return Book(
        purged_at={str(r.mid): r.purged_at for r in rows},
        emptied={str(r.mid): r.envelope == "" for r in rows},
        acks=acks,
        events=events,
    )


def read() -> Book:
    return db.call(_read)


def half_purged(book: Book, drill: Drill) -> list[str]:
    """Every message whose envelope, acknowledgements and `purged_at` disagree, and every
    purge the committed events do not name exactly once."""
    found = []
    for mid, at in book.purged_at.items():
        purged = at is not None
        if book.emptied[mid] != purged:
            found.append(f"{mid}: purged_at {at}, envelope emptied {book.emptied[mid]}")
        acks = book.acks[mid]
        if purged and any(a is not None for a in acks):
            found.append(f"{mid}: purged with an acknowledgement left")
        if not purged and mid in drill.acked and all(a is None for a in acks):
            found.append(f"{mid}: not purged, its acknowledgement gone")
        if book.events[mid] != (1 if purged else 0):
            found.append(f"{mid}: purged={purged}, named by {book.events[mid]} msg.purged")
    found += [f"{mid}: not due, purged" for mid in drill.kept if book.purged_at[mid]]
    return found


def purged(book: Book) -> set[str]:
    return {mid for mid, at in book.purged_at.items() if at is not None}


def finish(stack: DrillStack, drill: Drill, what: str, **facts: Any) -> None:
    """A fresh worker purges the rest; then each due message is purged once, on the log."""
    stack.drill_worker()

    def done() -> bool:
        stack.wake("lifecycle.purge")  # a run that met a dead run's rows still locked retries
        return purged(read()) >= drill.due

    wait_until(done, SETTLE_S, "every due message to be purged", every=1.0)
    book = read()
    assert half_purged(book, drill) == []
    assert purged(book) == drill.due
    stack.wake("log.sequence")
    wait_until(all_sequenced, SETTLE_S, "every event to be sequenced", every=0.5)
    on_log: Counter[str] = Counter()
    for raw in db.call(lambda s: s.scalars(select(LogLeaf.leaf_bytes))):
        leaf = json.loads(raw)
        if leaf["kind"] == "msg.purged":
            on_log.update(m["mid"] for m in leaf["messages"])
    assert on_log == Counter(dict.fromkeys(drill.due, 1))
    print(f"\nDRILL {what}: due={len(drill.due)} " + " ".join(f"{k}={v}" for k, v in facts.items()))


def test_worker_killed_inside_a_purge_batch(keys: Exchange, stack: DrillStack) -> None:
    drill = prepare(keys)
    # Both agreements have due messages, fewer than a batch each, more than one together: the
    # first transaction passes the point twice (one whole batch), the second once.
    per_agreement = Counter(len(read().acks[mid]) for mid in drill.due)  # 3 copies: Mekong
    assert all(n < lifecycle.PURGE_BATCH for n in per_agreement.values()), per_agreement
    stack.new_drill("purge")  # fires once among the drill's processes
    doomed = stack.drill_worker(crash_at=f"{POINT}@3:stop")
    stack.wake("lifecycle.purge")
    wait_until(lambda: f"crash point {POINT}" in doomed.text(), SETTLE_S, "the crash point")
    frozen = read()  # the child hangs inside its transaction, row locks held
    assert half_purged(frozen, drill) == []
    committed = purged(frozen)
    # The first batch committed whole; the frozen one's purge is not visible before its commit.
    assert len(committed) == lifecycle.PURGE_BATCH
    assert committed < drill.due
    doomed.kill9()  # SIGKILL the group: the frozen child dies inside the transaction
    after = read()
    assert half_purged(after, drill) == []
    assert purged(after) == committed
    finish(stack, drill, "purge crash point", committed_before_kill=len(committed))


def test_worker_killed_at_a_random_moment_of_the_purge(keys: Exchange, stack: DrillStack) -> None:
    drill = prepare(keys)
    victim = stack.drill_worker()
    stack.wake("lifecycle.purge")
    time.sleep(random.uniform(0.0, 1.0))  # a whole purge of these takes about a second
    victim.kill9()
    book = read()
    assert half_purged(book, drill) == []
    finish(stack, drill, "purge kill -9", purged_at_kill=len(purged(book)))
