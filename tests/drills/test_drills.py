"""Fault drills on the real production stack, each followed by the invariant checker.

The stack (started here, per module): two uvicorn API processes in the production profile, a
Celery worker (prefork) and beat, PostgreSQL and Redis. Submissions go over HTTP through
`Sender`, which keeps the client's history. Each drill breaks one thing, then
`broker.invariants.service.wait_settled` must report zero violations within 120 s: every accepted
message in every recipient inbox exactly once, every accept, refusal, delivery, fetch and ack on
the audit log exactly once, the log verified in full. Partners then follow their cursors over
HTTP and must see each of their messages exactly once, in order.

Short form: one run of each drill (part of `pytest -m hostile`). Long form: `DRILL_ROUNDS=N`
adds N rounds of randomly chosen drills at random crash points (`DRILL_SEED` to replay one).
Drills that stop, restart or flush PostgreSQL or Redis hold `exclusive_servers`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, keyring
from broker.config import settings
from broker.faults import POINTS
from broker.invariants import service as checker
from broker.messages.models import Delivery, Message
from tests.conftest import server_lock
from tests.drills.stack import Api, DrillStack, Sender
from tests.hostile.conftest import arm, wipe
from tests.inbox.conftest import MEKONG, mekong
from tests.inbox.stack import pg_ready, pg_restart, redis_ping, redis_start, redis_stop, wait_until

pytestmark = [pytest.mark.hostile, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Its own Redis database per xdist worker (queues are per database; the suite's is 15).
_XDIST = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_URL = os.environ.get("DRILL_REDIS_URL", f"redis://127.0.0.1:6379/{12 - _XDIST % 4}")
SETTLE_S = checker.SETTLE_TIMEOUT_S
ROUNDS = int(os.environ.get("DRILL_ROUNDS", "0"))
SEED = int(os.environ.get("DRILL_SEED", str(int(time.time()))))
RESULTS = os.environ.get("DRILL_RESULTS")  # a JSON-lines file to append each drill's record to
WORKER_POINTS = [p for p in POINTS if p.startswith(("relay.", "log."))]
# A worker frozen inside a transaction holds its row locks, so another worker could not take
# over its task until it resumes: pauses are drilled where the task has committed, unacked.
PAUSE_POINTS = [p for p in WORKER_POINTS if p.endswith("after_commit")]
API_POINTS = [p for p in POINTS if p.startswith("submit.")]


@dataclass
class Drills:
    stack: DrillStack
    sender: Sender
    a: Api  # killed and restarted by the drills
    b: Api  # always up: the other replica a client fails over to


@pytest.fixture(scope="module")
def drills(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drills]:
    if backend != "postgresql":
        pytest.skip("the production profile runs on PostgreSQL")
    # A module fixture runs outside its tests' hold on the server lock: take it here, or a
    # drill in another process could restart PostgreSQL in the middle of this set-up.
    with server_lock(exclusive=False):
        wipe()
        keyring.load_or_create()  # before any process could race to create the broker's keys
        ex = arm(None)
        with_redis(lambda: redis.Redis.from_url(REDIS_URL).flushdb())
        cfg = settings()
        stack = DrillStack(
            database_url=cfg.sqlalchemy_url,
            redis_url=REDIS_URL,
            data_dir=tmp_path_factory.mktemp("drills"),
            keys_dir=cfg.broker_keys_dir.resolve(),
        )
        stack.new_drill("setup")
        try:
            a, b = stack.api("a"), stack.api("b")
            stack.beat()
            stack.drill_worker()
            sender = Sender(ex, [a, b])
        except BaseException:
            stack.close()
            raise
    try:
        yield Drills(stack, sender, a, b)
        sender.http.close()
    finally:
        with server_lock(exclusive=False):
            stack.close()
            with_redis(lambda: None)  # whatever a drill did, leave Redis running for everyone
            wipe()


def with_redis(fn: Callable[[], object]) -> None:
    if not redis_ping():
        redis_start()
    fn()


def send_some(d: Drills, n: int, *, via: Api | None = None) -> list[str]:
    """n alerts through the APIs, every third to three Mekong inboxes."""
    mids = []
    for i in range(n):
        routing = mekong(d.sender.ex) if i % 3 == 0 else d.sender.ex.routing()
        answer = d.sender.send(routing, via=via)
        assert answer.status_code in (200, 201), answer.text
        mids.append(routing["mid"])
    return mids


def settled(d: Drills, drill: str) -> checker.Report:
    """Wait for the checker to pass (bounded: 120 s), with the drill's processes' logs on failure."""
    report = db.run(checker.wait_settled, db.session_scope, d.sender.history, timeout_s=SETTLE_S)
    if not report.ok:
        logs = "\n".join(f"--- {p.name}\n{p.text()[-2000:]}" for p in d.stack.procs)
        pytest.fail(f"{drill}: invariants broken\n{report}\n{logs}")
    return report


def verify_drill(d: Drills, drill: str, **facts: Any) -> None:
    """The checker, then the partners' view over HTTP, then one ack, then the checker again."""
    first = settled(d, drill)
    rows = db.call(inbox_rows)
    views = {agency: d.sender.inbox(agency) for agency in MEKONG}
    for agency, seen in views.items():
        assert [seq for seq, _ in seen] == list(range(1, len(seen) + 1)), agency
        assert sorted(m for _, m in seen) == sorted(str(m) for m, r in rows if r == agency)
    mid = views["HK-CED"][-1][1]
    answer = d.sender.http.post(
        f"{d.b.url}/v1/inbox/{mid}/ack",
        json={"ack": ack_jws(d, "HK-CED", mid)},
        headers=d.sender.ex.agency_headers("HK-CED"),
    )
    assert answer.status_code == 200, answer.text
    final = settled(d, drill)
    record = {
        "drill": drill,
        "settled_s": round(first.waited_s, 1),
        **final.counts,
        "violations": len(final.violations),
        "client": dict(d.sender.statuses),
        **facts,
    }
    print(f"\nDRILL {json.dumps(record)}")  # pytest -s or -rP shows it
    if RESULTS:
        with Path(RESULTS).open("a") as out:
            out.write(json.dumps(record) + "\n")


async def inbox_rows(s: AsyncSession) -> list[tuple[uuid.UUID, str]]:
    """(mid, recipient) of every inbox entry in the database."""
    stmt = select(Message.mid, Delivery.recipient).join(Delivery, Delivery.message_id == Message.id)
    return [(mid, recipient) for mid, recipient in await s.execute(stmt)]


def ack_jws(d: Drills, agency: str, mid: str) -> str:
    from broker.crypto import envelope as env
    from broker.crypto.keys import sha256_b64u

    payload = {
        "v": 1,
        "mid": mid,
        "envelope_sha256": sha256_b64u(d.sender.envelopes[mid].encode()),
        "status": "decrypted",
        "at": int(time.time() * 1000),
    }
    return env.sign_compact(payload, d.sender.ex.agency_signing[agency], env.TYP_ACK)


# --- the drills -------------------------------------------------------------------------------


def drill_api_crash(d: Drills, point: str) -> None:
    """kill -9 of an API at a submit crash point; the client resends to the other replica."""
    d.stack.new_drill(f"api-{point}")
    doomed = d.stack.api(f"a-{point}", crash_at=point)
    routing = d.sender.ex.routing()
    answer = d.sender.send(routing, via=doomed)  # dies mid-submit; answered by the other API
    wait_until(lambda: not doomed.alive(), 10, "the API to die")
    assert doomed.popen is not None
    assert d.stack.fired(point) == doomed.popen.pid
    # Committed before the crash: the original receipt (200). Not committed: accepted now (201).
    assert answer.status_code == (200 if point == "submit.after_commit" else 201), answer.text
    doomed.start()  # restarted as a supervisor would, same settings: the point has fired
    send_some(d, 4, via=doomed)
    doomed.kill9()
    verify_drill(d, f"api kill -9 at {point}", first_answer=answer.status_code)


def drill_worker_crash(d: Drills, points: list[str]) -> None:
    """The worker's pool child exits at each named point once; Celery and the sweeps recover."""
    d.stack.new_drill("worker")
    armed = ",".join(points)
    worker = d.stack.replace_workers(crash_at=armed)
    send_some(d, 9)
    wait_until(
        lambda: all(d.stack.fired(p) for p in points) or not worker.alive(),
        60,
        f"the crash points {armed} to fire",
    )
    assert worker.alive()  # only pool children died; the main process replaced them
    crashes = worker.text().count("crash point ")
    assert crashes == len(points), worker.text()[-3000:]
    send_some(d, 3)
    verify_drill(d, f"worker crash at {armed}", child_crashes=crashes)


def drill_worker_paused(
    d: Drills, point: str = "log.after_commit", visibility_s: float = 4
) -> None:
    """SIGSTOP a worker holding a task past the visibility timeout; another runs it; SIGCONT."""
    d.stack.new_drill("pause")
    stalled = d.stack.replace_workers(crash_at=f"{point}:stop", visibility_s=visibility_s)
    other = d.stack.drill_worker(visibility_s=visibility_s)
    send_some(d, 6)
    wait_until(lambda: d.stack.fired(point) is not None, 60, f"{point} to stop the worker")
    child = d.stack.fired(point)
    assert child is not None
    task_ids = re.findall(r"\[([0-9a-f-]{36})\] received", stalled.text())
    held = task_ids[-1]  # the task the stopped child is running (prefetch 1, concurrency 1)
    paused_at = time.monotonic()
    try:
        # Past the visibility timeout, and until another worker runs the same task (bounded:
        # the drill's point is the pause; the redelivery is recorded, see the docs).
        time.sleep(visibility_s + 1)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: f"[{held}] received" in other.text(), 20, "the redelivery")
        redelivered = f"[{held}] received" in other.text()
        paused_s = time.monotonic() - paused_at
        send_some(d, 3)
    finally:
        os.kill(child, signal.SIGCONT)
    verify_drill(
        d,
        f"worker paused at {point} past a {visibility_s:.0f} s visibility timeout",
        redelivered=redelivered,
        paused_s=round(paused_s, 1),
    )


def drill_redis_lost(d: Drills) -> None:
    """Redis shut down without saving (every queued task gone), submissions go on, restarted."""
    d.stack.new_drill("redis")
    send_some(d, 3)
    try:
        redis_stop()
        during = send_some(d, 4)  # accepted into the outbox; the wake-ups are lost
    finally:
        redis_start()
    send_some(d, 3)
    verify_drill(d, "redis stopped (no save) and restarted", accepted_while_down=len(during))


def drill_postgres_restarted(d: Drills) -> None:
    """PostgreSQL restarted (every connection cut) under a stream of submissions."""
    d.stack.new_drill("postgres")
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_sending() -> None:
        try:
            while not stop.is_set():
                send_some(d, 1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    before = len(d.sender.history.accepted)
    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(d.sender.history.accepted) >= before + 5, 60, "submissions")
        pg_restart(settings().sqlalchemy_url)
        at = len(d.sender.history.accepted)
        wait_until(lambda: len(d.sender.history.accepted) >= at + 5, 90, "submissions after")
    finally:
        stop.set()
        sender.join(SETTLE_S)
        wait_until(lambda: pg_ready(settings().sqlalchemy_url), 60, "PostgreSQL")
    assert not errors, errors
    db.reset_engine()
    verify_drill(d, "postgres restarted under submissions", statuses=dict(d.sender.statuses))


def drill_clock_skew(d: Drills, api_skew_s: float = 90, worker_skew_s: float = -300) -> None:
    """An API whose clock is ahead and a worker whose clock is behind; time-window edges."""
    from broker.messages.service import IAT_FUTURE_S, IAT_PAST_S

    d.stack.new_drill("skew")
    d.stack.replace_workers(skew_s=worker_skew_s)
    skewed = d.stack.api("skewed", skew_s=api_skew_s)
    send_some(d, 4, via=skewed)  # the client's clock is right: inside the skewed API's window
    margin = 5
    edges = {
        IAT_FUTURE_S - margin: 201,
        IAT_FUTURE_S + margin: 422,
        -IAT_PAST_S + margin: 201,
        -IAT_PAST_S - margin: 422,
    }
    for api, skew in ((skewed, api_skew_s), (d.b, 0.0)):
        for offset, expected in edges.items():
            iat = int(time.time() + skew + offset)  # relative to that API's clock
            routing = d.sender.ex.routing(iat=iat, exp=iat + 86400)
            answer = d.sender.send(routing, via=api)
            assert answer.status_code == expected, (api.name, offset, answer.text)
            if expected == 422:
                assert answer.json()["code"] == "replay.iat_out_of_window"
    skewed.kill9()
    verify_drill(d, f"clock skew api {api_skew_s:+.0f}s worker {worker_skew_s:+.0f}s")
    d.stack.replace_workers()


# --- short form: each drill once ---------------------------------------------------------------


@pytest.mark.parametrize("point", API_POINTS)
def test_api_killed_at_a_submit_crash_point(drills: Drills, point: str) -> None:
    drill_api_crash(drills, point)


def test_worker_killed_at_every_relay_and_log_crash_point(drills: Drills) -> None:
    drill_worker_crash(drills, WORKER_POINTS)


def test_worker_paused_past_the_visibility_timeout(drills: Drills) -> None:
    drill_worker_paused(drills)


def test_clock_skew_at_the_time_window_edges(drills: Drills) -> None:
    drill_clock_skew(drills)


def test_redis_lost_and_restarted(drills: Drills, exclusive_servers: None) -> None:
    drill_redis_lost(drills)


def test_postgres_restarted_under_submissions(drills: Drills, exclusive_servers: None) -> None:
    drill_postgres_restarted(drills)


# --- long form: DRILL_ROUNDS=N random drills at random points ----------------------------------


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_random_drill(drills: Drills, round_: int, exclusive_servers: None) -> None:
    rng = random.Random(SEED * 1000 + round_)
    kind = rng.choice(["api", "worker", "pause", "redis", "postgres", "skew"])
    print(f"\nround {round_} (DRILL_SEED={SEED}): {kind}")
    if kind == "api":
        drill_api_crash(drills, rng.choice(API_POINTS))
    elif kind == "worker":
        drill_worker_crash(drills, rng.sample(WORKER_POINTS, rng.randint(1, len(WORKER_POINTS))))
    elif kind == "pause":
        drill_worker_paused(drills, rng.choice(PAUSE_POINTS), rng.choice([3, 4, 6]))
    elif kind == "redis":
        drill_redis_lost(drills)
    elif kind == "postgres":
        drill_postgres_restarted(drills)
    else:
        drill_clock_skew(drills, rng.choice([-90, 90]), rng.choice([-300, 300]))
