"""Wake long-polling inbox readers when deliveries commit.

Publishing happens only after the delivering transaction has committed (a commit hook), so a
woken reader always finds the rows. Embedded profile: in-process, straight to the board.
Production: Redis pub/sub on `inbox:<agency>`, with one subscriber thread per API process
fanning messages out to local waiters (no database polling loop, no connection per waiter).

The board keeps a version per inbox. A reader takes the version before it reads the database
and waits only while the version is unchanged, so a wake-up between its read and its wait is
never lost. Long-polls wait on an asyncio future (`wait_async`): a waiting request holds no
thread of the server's threadpool, so many partners can long-poll without starving ordinary
requests. `wait` (a condition variable) serves threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable

import redis
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.config import Profile, settings
from broker.logging import get_logger

_log = get_logger("broker.inbox.notify")
_KEY = "broker.inbox.notify"
CHANNEL = "inbox:"


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Board:
    """Per-agency version counters: cheap, exact wake-ups for threads and coroutines."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}
        self._epoch = 0  # bumped for everyone when wake-ups may have been missed
        self._futures: dict[str, set[_Waiter]] = {}

    def _version(self, agency: str) -> int:
        return self._epoch + self._versions.get(agency, 0)

    def version(self, agency: str) -> int:
        with self._cond:
            return self._version(agency)

    def bump(self, agencies: Iterable[str]) -> None:
        with self._cond:
            woken: list[_Waiter] = []
            for agency in agencies:
                self._versions[agency] = self._versions.get(agency, 0) + 1
                woken += self._futures.pop(agency, ())
            self._cond.notify_all()
        _resolve(woken)

    def bump_all(self) -> None:
        """Wake every waiter so it reads the database again (after a gap in the wake-ups)."""
        with self._cond:
            self._epoch += 1
            woken = [entry for entries in self._futures.values() for entry in entries]
            self._futures.clear()
            self._cond.notify_all()
        _resolve(woken)

    def wait(self, agency: str, seen: int, timeout: float) -> bool:
        """Block this thread until the version moves from `seen` (True) or the timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._version(agency) != seen, timeout)

    async def wait_async(self, agency: str, seen: int, timeout: float) -> bool:
        """Like `wait`, without holding a thread while it waits."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._cond:
            if self._version(agency) != seen:
                return True
            self._futures.setdefault(agency, set()).add(entry)
        try:
            await asyncio.wait_for(entry[1], timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._cond:
                waiting = self._futures.get(agency)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._futures[agency]


def _resolve(entries: Iterable[_Waiter]) -> None:
    for loop, future in entries:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
            loop.call_soon_threadsafe(_set, future)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


board = _Board()


def after_commit(session: AsyncSession, agencies: Iterable[str]) -> None:
    """Wake readers of these inboxes once this transaction commits."""
    db.after_commit(session, _KEY, _Pending()).update(agencies)


class _Pending(set[str]):
    """The inboxes a transaction delivered to, announced in one publish after its commit."""

    def __call__(self) -> None:
        publish(self)


def publish(agencies: Iterable[str]) -> None:
    agencies = sorted(set(agencies))
    if settings().profile is Profile.embedded:
        board.bump(agencies)
        return
    try:
        client = _redis()
        pipe = client.pipeline(transaction=False)
        for agency in agencies:
            pipe.publish(CHANNEL + agency, b"1")
        pipe.execute()
    except Exception as exc:
        _log.warning("inbox wake-up not published", error=type(exc).__name__)


_clients: dict[str, redis.Redis] = {}
_listener_lock = threading.Lock()
_listener: list[threading.Thread] = []


def _redis() -> redis.Redis:
    url = settings().redis_url
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=5, health_check_interval=30)
    return _clients[url]


def _subscriber() -> redis.Redis:
    # No socket timeout: a quiet channel is normal. Dead connections are found by the
    # health-check PINGs that `get_message` sends, and by TCP keepalive.
    return redis.Redis.from_url(
        settings().redis_url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=15,
    )


def _listen() -> None:
    import time

    while True:
        pubsub = None
        try:
            pubsub = _subscriber().pubsub()  # type: ignore[no-untyped-call]
            pubsub.psubscribe(CHANNEL + "*")
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message.get("type") == "psubscribe":
                    # Wake-ups published while this process was not subscribed are gone:
                    # every waiter reads the database once more.
                    board.bump_all()
                    continue
                channel = message.get("channel", b"")
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                board.bump([name.removeprefix(CHANNEL)])
        except Exception as exc:
            _log.warning("inbox listener reconnecting", error=type(exc).__name__)
            time.sleep(1)
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except Exception:
                    _log.debug("closing the old subscription failed")


def ensure_listener() -> None:
    """Production: start this process's Redis subscriber (idempotent)."""
    if settings().profile is Profile.embedded:
        return
    with _listener_lock:
        if not _listener or not _listener[0].is_alive():
            thread = threading.Thread(target=_listen, name="inbox-listener", daemon=True)
            thread.start()
            _listener[:] = [thread]
