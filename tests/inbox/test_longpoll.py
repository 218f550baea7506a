"""Long-poll (`GET /v1/inbox?wait=`): woken by the delivery's commit, bounded, holding no thread."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from broker import db
from broker.config import Profile, settings
from broker.inbox import notify, service
from tests.inbox.conftest import HK, agency, submit
from tests.messages.conftest import Exchange


def relay() -> int:
    return db.run(service.relay_all, db.session_scope)


def test_waiting_long_polls_hold_no_thread_and_all_wake_on_the_commit(keys: Exchange) -> None:
    waiters = 6

    async def scenario() -> tuple[list[list[str]], str, float]:
        # Two threads for everything, as if the server's threadpool were nearly used up.
        limiter = anyio.to_thread.current_default_thread_limiter()
        tokens, limiter.total_tokens = limiter.total_tokens, 2
        try:
            return await waits()
        finally:
            limiter.total_tokens = tokens

    async def waits() -> tuple[list[list[str]], str, float]:
        polls = [
            asyncio.create_task(service.long_poll(db.session_scope, agency(HK), None, 100, 20))
            for _ in range(waiters)
        ]
        await asyncio.sleep(0.5)
        assert not any(p.done() for p in polls), "an empty inbox answered before the wait"
        # Ordinary work still gets a thread at once: the waiting polls hold none.
        started = time.monotonic()
        await anyio.to_thread.run_sync(time.sleep, 0)
        assert time.monotonic() - started < 1.0
        mid = await anyio.to_thread.run_sync(submit, keys, keys.routing())
        await service.relay_all(db.session_scope)
        committed = time.monotonic()
        pages = await asyncio.wait_for(asyncio.gather(*polls), 10)
        return [[str(i.mid) for i in p.items] for p in pages], mid, time.monotonic() - committed

    pages, mid, woken_after = db.run(scenario)
    assert pages == [[mid]] * waiters
    assert woken_after < 2.0  # the wake-up, not the 20 s wait, ended them


def test_the_wait_is_bounded_and_an_empty_page_keeps_the_cursor(keys: Exchange) -> None:
    submit(keys, keys.routing())
    relay()

    async def poll(after: str | None, wait: float) -> tuple[list[int], str, float]:
        started = time.monotonic()
        page = await service.long_poll(db.session_scope, agency(HK), after, 100, wait)
        return [i.seq for i in page.items], page.next_cursor, time.monotonic() - started

    assert db.run(poll, None, 5)[:2] == ([1], "1")  # something there: answered at once
    seqs, cursor, took = db.run(poll, "1", 0.6)
    assert (seqs, cursor) == ([], "1")
    assert 0.6 <= took < 3.0


@pytest.mark.redis
@pytest.mark.postgres
def test_production_long_poll_is_woken_through_redis_pub_sub(
    keys: Exchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = settings().model_copy(update={"redis_url": redis_url, "profile": Profile.production})
    monkeypatch.setattr(notify, "settings", lambda: cfg)
    waited: list[float] = []

    async def scenario() -> list[str]:
        task = asyncio.create_task(service.long_poll(db.session_scope, agency(HK), None, 100, 20))
        await asyncio.sleep(1.0)  # the listener subscribes (and wakes everyone once: a re-read)
        assert not task.done()
        mid = await anyio.to_thread.run_sync(submit, keys, keys.routing())
        await service.relay_all(db.session_scope)  # commits, then publishes inbox:HK-CED
        committed = time.monotonic()
        page = await asyncio.wait_for(task, 10)
        waited.append(time.monotonic() - committed)
        assert [str(i.mid) for i in page.items] == [mid]
        return [mid]

    db.run(scenario)
    assert waited[0] < 2.0
