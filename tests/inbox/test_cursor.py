"""Inbox cursors never skip and never repeat, while deliveries commit concurrently (decision 4).

The main test runs writers, relays and pollers at once on PostgreSQL, where transactions really
overlap: writers and pollers share the process's event loop as API requests share the server's,
and each relay runs on an event loop (and connection pool) of its own, as each Celery worker
process does. The controls show, on the same database, the interleaving that defeats an
autoincrement cursor, and that the inbox counter's row lock prevents that interleaving.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import db
from broker.ids import utcnow
from broker.inbox import repository, service
from broker.messages.models import Outbox
from tests.inbox.conftest import HK, agency, drain, ledger, mekong, submit
from tests.messages.conftest import Exchange

pytestmark = pytest.mark.postgres

WRITERS = 4
PER_WRITER = 30
RELAYS = 3
POLLERS = 3
DEADLINE_S = 90.0


class _Threads:
    """Run functions in threads; re-raise the first failure in the test's thread."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, fn: Any, *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(end - time.monotonic(), 0.1))
        if self.errors:
            raise self.errors[0]
        assert not [t for t in self.threads if t.is_alive()], "threads still running"


def test_concurrent_writers_relays_and_pollers_see_every_message_once_in_one_order(
    keys: Exchange,
) -> None:
    accepted: dict[str, list[str]] = {}  # mid -> recipients
    urgent: set[str] = set()
    lock = threading.Lock()
    writers_done = threading.Event()
    stop = threading.Event()
    rng = random.Random(7)

    def write(n: int) -> None:
        for i in range(PER_WRITER):
            # Mostly bilateral alerts to HK-CED, some multilateral ones (three inbox locks).
            routing = mekong(keys) if (n + i) % 4 == 0 else keys.routing()
            # One in three urgent: pollers are served those first, from beyond their cursor.
            routing["priority"] = "urgent" if (n + i) % 3 == 0 else "routine"
            mid = submit(keys, routing)
            with lock:
                accepted[mid] = routing["recipients"]
                if routing["priority"] == "urgent":
                    urgent.add(mid)
            time.sleep(rng.random() * 0.004)

    def relay() -> None:
        async def run() -> None:
            try:
                while not stop.is_set():
                    if await service.relay_all(db.session_scope) == 0:
                        await asyncio.sleep(0.002)
            finally:
                await db.dispose()  # this loop's connections

        asyncio.run(run())

    def follow(out: list[tuple[int, str]], page_size: int, agency_id: str) -> None:
        caller, cursor = agency(agency_id), None
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            page = db.call(service.poll, caller, cursor, page_size)
            # Every item up to next_cursor (urgent ones first), then urgent copies from beyond
            # it, which come again when the cursor reaches them.
            for item in page.items:
                assert item.ahead == (item.seq > int(page.next_cursor))
            ahead.extend(str(item.mid) for item in page.items if item.ahead)
            out += sorted((item.seq, str(item.mid)) for item in page.items if not item.ahead)
            cursor = page.next_cursor
            if writers_done.is_set() and not page.items:
                with lock:
                    expected = {m for m, r in accepted.items() if agency_id in r}
                if expected <= {mid for _, mid in out}:
                    return
            if not page.items:
                time.sleep(0.003)
        raise AssertionError(f"poller of {agency_id} did not see everything in {DEADLINE_S} s")

    ahead: list[str] = []
    views: list[list[tuple[int, str]]] = [[] for _ in range(POLLERS)]
    kr_view: list[tuple[int, str]] = []
    readers = _Threads()
    relays = _Threads()
    writers = _Threads()
    for i, view in enumerate(views):
        readers.start(follow, view, (3, 7, 50)[i % 3], HK)
    readers.start(follow, kr_view, 5, "KR-KCS")
    for _ in range(RELAYS):
        relays.start(relay)
    for n in range(WRITERS):
        writers.start(write, n)
    try:
        writers.join(DEADLINE_S)
        writers_done.set()
        readers.join(DEADLINE_S)
    finally:
        writers_done.set()
        stop.set()
        relays.join(30)

    hk = {mid for mid, recipients in accepted.items() if HK in recipients}
    assert len(accepted) == WRITERS * PER_WRITER
    for view in views:
        seqs = [seq for seq, _ in view]
        mids = [mid for _, mid in view]
        assert seqs == list(range(1, len(hk) + 1)), "gap or repeat in inbox numbers"
        assert Counter(mids) == Counter(hk), "a poller missed or repeated a message"
        assert view == views[0], "pollers saw different orders"
    kr = {mid for mid, recipients in accepted.items() if "KR-KCS" in recipients}
    assert [seq for seq, _ in kr_view] == list(range(1, len(kr) + 1))
    assert {mid for _, mid in kr_view} == kr
    assert set(ahead) <= urgent, "only urgent copies are served ahead of the cursor"
    # The database agrees: one delivery and one msg.delivered per (message, recipient), ...
    assert ledger().problems(list(accepted)) == []
    # ... and one msg.fetched per delivery, however many pollers raced to fetch it first.
    from broker.audit.models import AuditEvent

    details = db.call(
        lambda s: s.scalars(select(AuditEvent.details).where(AuditEvent.kind == "msg.fetched"))
    )
    fetched = Counter((d["mid"], d["recipient"]) for d in details)
    followed = {(m, r) for m, rs in accepted.items() for r in rs if r in (HK, "KR-KCS")}
    assert fetched == Counter(followed)
    # A new poller starting from scratch sees exactly what the others saw.
    assert drain(HK) == views[0]


async def _control_row(conn: AsyncConnection) -> int:
    row = await conn.execute(
        insert(Outbox)
        .values(topic="control", ref=uuid.uuid4(), created_at=utcnow())
        .returning(Outbox.id)
    )
    return int(row.scalar_one())


def test_control_an_autoincrement_cursor_skips_a_late_commit(clean_db: str) -> None:
    """Why `inbox_seq` exists: ids are drawn at insert, visibility comes at commit."""

    async def scenario() -> None:
        engine = db.engine()
        async with engine.connect() as t1, engine.connect() as t2, engine.connect() as reader:
            early = await _control_row(t1)  # drawn first, committed last
            late = await _control_row(t2)
            await t2.commit()
            assert late > early

            async def follow(cursor: int) -> list[int]:
                ids = await reader.scalars(
                    select(Outbox.id)
                    .where(Outbox.topic == "control", Outbox.id > cursor)
                    .order_by(Outbox.id)
                )
                found = list(ids)
                await reader.rollback()
                return found

            first_page = await follow(0)
            assert first_page == [late]
            await t1.commit()
            second_page = await follow(first_page[-1])
            assert second_page == []  # the cursor moved past `early`: that poller never sees it
            assert await follow(0) == [early, late]

    db.run(scenario)


def test_control_the_inbox_counter_lock_orders_commits(world: dict[str, Any]) -> None:
    """The same interleaving with inbox numbers: the second taker waits for the first commit."""

    async def take_second() -> int:
        async with db.session_scope() as s:
            return await repository.take_seqs(s, HK, 1)

    async def scenario() -> tuple[int, int]:
        second: asyncio.Task[int] | None = None
        try:
            async with db.session_scope() as first:
                seq = await repository.take_seqs(first, HK, 1)  # holds the counter row lock
                second = asyncio.create_task(take_second())
                await asyncio.sleep(0.5)
                assert not second.done(), "the second transaction must wait for the first"
            # Committed: numbered after the first, visible only after it.
            return seq, await asyncio.wait_for(second, 10)
        finally:
            if second is not None and not second.done():
                await asyncio.wait([second], timeout=10)

    seq, second_seq = db.run(scenario)
    assert second_seq == seq + 1


@pytest.mark.parametrize("after", ["x", "-1", "1.0", " 1", "\u0661", "\u00b2", "1" * 19])
def test_a_cursor_is_ascii_digits_only(after: str) -> None:
    with pytest.raises(service.BadCursor):
        service._cursor(after)
    assert service._cursor("") == service._cursor(None) == 0
    assert service._cursor("42") == 42
