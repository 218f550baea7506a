"""Crash drills on the real stack: a Celery worker (prefork) and beat, Redis and PostgreSQL.

Each drill submits alerts, breaks something in the middle of delivery (kill -9 at a named crash
point, kill -9 at a random moment, Redis flushed with tasks queued, Redis stopped and started
again, PostgreSQL restarted), then lets a fresh worker or the beat sweep recover, and checks
research 4.6 I1-I3 and I5 on the database: every accepted message reaches every recipient inbox
exactly once, inbox numbers are contiguous, no `msg.accepted`/`msg.delivered` event is lost
or doubled. PostgreSQL only (the production profile refuses SQLite); every wait is bounded and
every process is killed in a `finally`.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from sqlalchemy.exc import DBAPIError

from broker import db
from broker.config import settings
from tests.inbox.conftest import MEKONG, RETRIED, Ledger, drain, ledger, mekong, submit
from tests.inbox.stack import (
    Stack,
    pg_ready,
    pg_restart,
    redis_ping,
    redis_start,
    redis_stop,
    wait_until,
)
from tests.messages.conftest import Exchange

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SETTLE_S = 60.0
T = TypeVar("T")
# A restart in progress: a driver error (failed connects are wrapped too), or a socket's own.
DB_AWAY = (DBAPIError, OSError)


@pytest.fixture
def stack(keys: Exchange, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    cfg = settings()
    s = Stack(
        database_url=cfg.sqlalchemy_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        keys_dir=cfg.broker_keys_dir.resolve(),
    )
    try:
        yield s
    finally:
        s.close()
        redis_start()  # whatever a drill did, leave Redis running for everyone else


_sent = itertools.count()


def send(keys: Exchange, n: int) -> list[str]:
    """n alerts, every fifth multilateral (three inboxes); resent while the database is away."""
    return [
        submit(keys, mekong(keys) if next(_sent) % 5 == 0 else keys.routing(), retry_s=SETTLE_S)
        for _ in range(n)
    ]


def retrying(fn: Callable[[], T], what: str) -> T:
    """Read the database, waiting out a restart (another drill may be running one)."""
    result: list[T] = []

    def attempt() -> bool:
        try:
            result[:] = [fn()]
        except DB_AWAY:
            db.reset_engine()
            return False
        return True

    wait_until(attempt, SETTLE_S, what, every=0.5)
    return result[0]


def settle(accepted: list[str]) -> Ledger:
    """Wait for the outbox to drain, then return the ledger (with a useful failure)."""
    state: list[Ledger] = []

    def done() -> bool:
        try:
            state[:] = [ledger()]
        except DB_AWAY:
            db.reset_engine()
            return False  # the database is coming back
        return state[0].settled

    try:
        wait_until(done, SETTLE_S, "every delivery to become available", every=0.25)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {state[0].problems(accepted)[:10] if state else ''}"
        ) from None
    return state[0]


def all_sequenced() -> bool:
    from sqlalchemy import select

    from broker.audit.models import AuditEvent

    try:
        found = list(db.call(lambda s: s.scalars(select(AuditEvent.leaf_index))))
    except DB_AWAY:
        db.reset_engine()
        return False
    indexes = [i for i in found if i is not None]
    if len(indexes) < len(found):
        return False
    assert sorted(indexes) == list(range(len(indexes))), "log indexes are not contiguous"
    return True


def assert_exactly_once(accepted: list[str], drill: str, **facts: Any) -> None:
    start = time.monotonic()
    book = settle(accepted)
    deliveries = len(book.deliveries)
    print(  # the drill's record (pytest -s or -rP shows it)
        f"\nDRILL {drill}: accepted={len(accepted)} stored={len(book.messages)} "
        f"deliveries={deliveries} settled_in={time.monotonic() - start:.1f}s "
        + " ".join(f"{k}={v}" for k, v in facts.items())
    )
    assert book.problems(accepted) == []
    # The log sequencer, run by the same worker, puts every event on the log once (I6).
    wait_until(all_sequenced, SETTLE_S, "every audit event to be sequenced", every=0.25)
    # And as the partners see it: each inbox, followed from the start, once and in order.
    for agency in MEKONG:
        seen = retrying(functools.partial(drain, agency), f"{agency}'s inbox")
        expected = {mid for mid, recipients in book.messages.items() if agency in recipients}
        assert [seq for seq, _ in seen] == list(range(1, len(expected) + 1))
        assert sorted(mid for _, mid in seen) == sorted(expected)


def test_worker_killed_at_a_crash_point_mid_delivery(keys: Exchange, stack: Stack) -> None:
    doomed = stack.worker(crash_at="relay.after_seq")
    accepted = send(keys, 12)
    stack.wake()
    # The pool child dies inside the relay transaction, after taking inbox numbers; with
    # reject_on_worker_lost the task comes back and the next child dies the same way.
    wait_until(lambda: "crash point relay.after_seq" in doomed.text(), 30, "the crash point")
    book = ledger()
    assert not book.settled
    assert all(seq is None for _, _, _, seq in book.deliveries), "a crashed relay left numbers"
    doomed.kill9()
    stack.worker()
    stack.beat()
    accepted += send(keys, 8)
    stack.wake()
    crashes = doomed.text().count("crash point relay.after_seq")
    assert_exactly_once(accepted, "crash-point relay.after_seq", child_crashes=crashes)


def test_worker_killed_at_random_while_a_backlog_drains(keys: Exchange, stack: Stack) -> None:
    rng = random.Random()
    stack.beat()
    victim = stack.worker()
    accepted: list[str] = []
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set() and len(accepted) < 150:
            accepted.extend(send(keys, 5))
            stack.wake()

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(accepted) >= 40, 60, "the first submissions")
        time.sleep(rng.uniform(0.05, 0.5))
        victim.kill9()  # main process and pool child, wherever they are
        at_kill = ledger()
        killed_after = f"{sum(st != 'queued' for *_, st, _ in at_kill.deliveries)}/{len(at_kill.deliveries)}-available"
        wait_until(lambda: len(accepted) >= 80, 60, "more submissions with no worker")
        stack.worker()
    finally:
        stop.set()
        sender.join(60)
    assert_exactly_once(accepted, "kill -9 worker", killed_after=killed_after)


@pytest.mark.usefixtures("exclusive_servers")  # flushes the Redis database every test run uses
def test_redis_flushed_with_wake_ups_queued(keys: Exchange, stack: Stack, redis_url: str) -> None:
    accepted = send(keys, 20)
    stack.wake("outbox.relay", "outbox.relay", "log.sequence")  # queued, no worker yet
    wait_until(redis_ping, 30, "Redis")  # another drill may be restarting it
    redis.Redis.from_url(redis_url).flushdb()  # every queued task is gone
    stack.worker()  # nothing will wake it: the tasks are gone
    stack.beat()  # the sweep finds the work in the outbox
    assert_exactly_once(accepted, "redis flushed")


@pytest.mark.usefixtures("exclusive_servers")  # stops the machine's Redis
def test_redis_stopped_and_started_again(keys: Exchange, stack: Stack) -> None:
    stack.beat()
    stack.worker()
    accepted = send(keys, 10)
    stack.wake()
    settle(accepted)
    try:
        redis_stop()
        accepted += send(keys, 10)  # accepted into the outbox while Redis is down
        sent = stack.wake()  # fails: nothing reaches the worker until Redis is back
    finally:
        redis_start()
    accepted += send(keys, 5)
    assert_exactly_once(accepted, "redis stopped and started", wake_sent_while_down=sent)
    # The same worker and beat did it: they reconnected rather than died (kombu#582).
    assert [p.name for p in stack.procs if not p.alive()] == []


@pytest.mark.usefixtures("exclusive_servers")  # restarts the machine's PostgreSQL
def test_postgres_restarted_under_submissions(keys: Exchange, stack: Stack) -> None:
    stack.beat()
    stack.worker()
    accepted: list[str] = []
    stop = threading.Event()
    RETRIED.clear()

    def keep_sending() -> None:
        while not stop.is_set():
            accepted.extend(send(keys, 1))

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(accepted) >= 15, 60, "submissions before the restart")
        pg_restart(settings().sqlalchemy_url)
        n = len(accepted)
        wait_until(lambda: len(accepted) >= n + 15, 60, "submissions after the restart")
    finally:
        stop.set()
        sender.join(SETTLE_S + 10)
        wait_until(lambda: pg_ready(settings().sqlalchemy_url), 60, "PostgreSQL")
    assert not sender.is_alive()
    # A submit cut off by the restart was sent again, same mid and envelope: whether or not its
    # first commit happened, it is stored once and delivered once (research I4).
    assert_exactly_once(accepted, "postgres restarted", resent_submits=len(set(RETRIED)))
