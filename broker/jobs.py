"""Wake background work after a commit, never before it.

Services call `after_commit(session, name)`; the names are collected on the session and sent
only once `session_scope` has committed. The database (the outbox and the unsequenced audit
events) is the record of what is due, so a lost wake-up only delays work until the next
periodic sweep. Wake-ups carry no data at all.

- Embedded profile: the in-process ticker runs the job soon (`ticker.wake`).
- Production profile: one background thread per process sends the wake-ups, so a request
  never waits on Redis. They are coalesced across every process by a "pending" flag in Redis,
  `broker:wake:<job>`: the thread sets it (`SET NX` with a TTL) and publishes the Celery task
  only if the flag was not already set; the task clears it when it starts (`started`, from the
  worker's `task_prerun`). A set flag means a run of the job has been sent and has not started
  yet, so it will see this commit: at most one task per job is ever waiting, however many
  requests there are (a Celery publish costs far more CPU than a `SET NX`, one Redis round
  trip in this thread), and an idle job is woken at once instead of after a fixed delay. The
  TTL bounds the damage of a flag whose task was lost (a Redis restart, a failed publish): new
  wake-ups resume after it, and the beat sweep, which clears the flag too, runs meanwhile.
- Jobs that may wait a little (`SPACED_S`: the log sequencer, whose receipts promise a merge
  delay of a second) are throttled instead: their flag is not cleared when a run starts but
  expires after the spacing, and a wake-up that found it set is sent again when it expires
  (a trailing wake-up), so every commit is followed by a run within the spacing, and there are
  at most 1/spacing such runs per second in all, with bigger batches. That leaves the workers
  free for deliveries: one sequencer run per commit would keep both of a 2-process worker busy.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import cast

import redis
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, ticker
from broker.config import Profile, settings
from broker.logging import get_logger

_log = get_logger("broker.jobs")

# The job names: one constant each (Celery task names and ticker jobs alike).
SEQUENCE = "log.sequence"  # the audit log sequencer
RELAY = "outbox.relay"  # deliveries from the outbox into inboxes
PUSH = "push.deliver"  # pushes to partners' endpoints
EXPIRE = "inbox.expire"  # unfetched copies withdrawn once their message's exp has passed
PURGE = "lifecycle.purge"  # messages purged once their agreement's retention has passed

_KEY = "broker.jobs"
FLAG = "broker:wake:"
FLAG_TTL_MS = 5000  # longer than a queued task normally waits; a lost one blocks no longer
MERGE_S = 0.001  # after each round of sends, wake-ups arriving meanwhile become one round
SPACED_S = {SEQUENCE: 0.25}  # job -> least time between woken runs (throttled jobs)


def after_commit(session: AsyncSession, name: str) -> None:
    """Ask for job `name` once this session's transaction has committed."""
    db.after_commit(session, (_KEY, name), functools.partial(wake, name))


def wake(name: str) -> None:
    """Run job `name` soon, in whichever way this profile runs jobs."""
    if settings().profile is Profile.embedded:
        ticker.wake(name)
    else:
        _publisher().request(name)


def started(name: str) -> None:
    """A run of job `name` is starting: commits from now on need a new wake-up."""
    if settings().profile is Profile.embedded or name in SPACED_S:
        return  # a throttled job's flag ends with its spacing
    try:
        _redis().delete(FLAG + name)
    except redis.RedisError as exc:  # the flag's TTL ends it anyway
        _log.warning("wake-up flag not cleared", job=name, error=type(exc).__name__)


_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    url = settings().redis_url
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return _clients[url]


class _Publisher(threading.Thread):
    """Coalesce wake-ups: at most one waiting Celery task per job, across all processes."""

    def __init__(self) -> None:
        super().__init__(name="broker-wakeups", daemon=True)
        self._pending: set[str] = set()
        self._trailing: dict[str, float] = {}  # throttled job -> when to try its wake-up again
        self._cond = threading.Condition()

    def request(self, name: str) -> None:
        with self._cond:
            self._pending.add(name)
            self._cond.notify()

    def _next(self) -> set[str]:
        with self._cond:
            while True:
                now = time.monotonic()
                for name, when in list(self._trailing.items()):
                    if when <= now:
                        self._pending.add(name)
                        del self._trailing[name]
                if self._pending:
                    names, self._pending = self._pending, set()
                    return names
                timeout = min(self._trailing.values(), default=now + 60.0) - now
                self._cond.wait(max(timeout, 0.001))

    def _send(self, name: str) -> None:
        from broker.queue import celery_app

        spacing = SPACED_S.get(name)
        if spacing:
            with self._cond:
                if name in self._trailing:
                    return  # the wake-up already due when the flag expires covers this commit
        client = _redis()
        ttl_ms = int(spacing * 1000) if spacing else FLAG_TTL_MS
        if client.set(FLAG + name, b"1", nx=True, px=ttl_ms):
            try:
                celery_app.send_task(name)
            except Exception:
                client.delete(FLAG + name)  # let the next commit try again
                raise
        elif spacing:
            # A run was sent less than `spacing` ago and may have started before this commit:
            # send another when the flag expires.
            left_ms = cast(int, client.pttl(FLAG + name))  # -2: expired meanwhile
            with self._cond:
                self._trailing[name] = time.monotonic() + max(int(left_ms), 1) / 1000
                self._cond.notify()

    def _warm(self) -> None:
        """Import Celery and connect to Redis now, not on the first commit's wake-up."""
        try:
            from broker.queue import celery_app

            _redis().ping()
            with celery_app.producer_pool.acquire(block=True) as producer:
                if producer.connection is not None:
                    producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:  # the first wake-up connects again; the sweep covers it
            _log.warning("wake-up path not warmed", error=type(exc).__name__)

    def run(self) -> None:
        self._warm()
        while True:
            # Throttled jobs last: a delivery's wake-up never waits behind the sequencer's.
            for name in sorted(self._next(), key=lambda n: (n in SPACED_S, n)):
                try:
                    self._send(name)
                except Exception as exc:
                    _log.warning(
                        "wake-up not sent; the sweep will run it",
                        job=name,
                        error=type(exc).__name__,
                    )
            time.sleep(MERGE_S)


_lock = threading.Lock()
_instance: list[_Publisher] = []


def start() -> None:
    """Start (and warm) this process's wake-up thread before the first request needs it."""
    if settings().profile is not Profile.embedded:
        _publisher()


def _publisher() -> _Publisher:
    with _lock:
        if not _instance or not _instance[0].is_alive():
            _instance[:] = [_Publisher()]
            _instance[0].start()
        return _instance[0]
