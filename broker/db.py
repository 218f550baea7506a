"""Engine, declarative base with a naming convention, and the one place that commits."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from broker.config import settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware (SQLite too)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL with synchronous=FULL: an accepted message survives power loss (NORMAL would not).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine with the durability settings the broker promises."""
    cfg = settings()
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take the write lock up front
        # so concurrent writers queue on busy_timeout instead of failing on upgrade.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(
        url,
        pool_size=cfg.db_pool_size,
        max_overflow=cfg.db_max_overflow,
        pool_pre_ping=True,
        connect_args={"options": "-c synchronous_commit=on -c timezone=UTC"},
    )


def engine() -> Engine:
    """The process-wide engine, created on first use."""
    global _engine, _factory
    if _engine is None:
        _engine = make_engine(settings().sqlalchemy_url)
        _factory = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def reset_engine() -> None:
    """Dispose the engine (after `config.configure`, or in tests)."""
    global _engine, _factory
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _factory = None


def new_session() -> Session:
    engine()
    assert _factory is not None
    return _factory()


_after_commit_hooks: list[Callable[[Session], None]] = []


def on_commit(hook: Callable[[Session], None]) -> None:
    """Register a process-wide hook run after every successful commit (jobs use it)."""
    _after_commit_hooks.append(hook)


@contextmanager
def session_scope() -> Iterator[Session]:
    """Commit on success, roll back on error. Services only flush."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    for hook in _after_commit_hooks:
        hook(session)


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one session per request, committed by `session_scope`."""
    with session_scope() as session:
        yield session


# --- the async hot paths (PostgreSQL) -------------------------------------------------------
#
# `POST /v1/messages`, the inbox poll and the acknowledgement run on the event loop with an
# asyncpg connection instead of a worker thread with a Session: under load the thread
# hand-offs and GIL waits cost more than the submit itself, and asyncpg costs about half of
# psycopg's async client CPU per statement under uvloop (docs/performance.md). `transaction()`
# below is these paths' one place that commits or rolls back, as `session_scope` is for
# everything else. The statements are plain SQL in the repositories, written with psycopg's
# named placeholders (`%(name)s`); the rules are the same functions as the sync path's.

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@functools.lru_cache(maxsize=256)
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`%(name)s` placeholders as asyncpg's `$n` (a name used twice is one parameter)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(number, sql), tuple(names)


def _sa_error(exc: BaseException, *, closed: bool) -> Exception:
    """An asyncpg failure as the SQLAlchemy error the sync path would raise, which the handlers
    answer: 503 for a lost or refused connection, 422 for data PostgreSQL refuses (NUL, out of
    range); an integrity violation stays an IntegrityError for the service to handle.
    `closed`: the connection is closed now (asyncpg's own errors on it are then a loss)."""
    import asyncpg
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith("23"):
            return sa_exc.IntegrityError(None, None, exc)
        if state.startswith("22"):
            return sa_exc.DataError(None, None, exc)
        if state[:2] in ("08", "53", "57", "58"):
            return sa_exc.OperationalError(None, None, exc)
        return sa_exc.DBAPIError(None, None, exc)
    if isinstance(exc, (OSError, asyncpg.ConnectionDoesNotExistError)) or closed:
        return sa_exc.OperationalError(None, None, exc)
    return sa_exc.DBAPIError(None, None, exc)  # a misuse of the driver: a bug, 500


def _driver_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class Rows:
    """The rows of one statement, read as from a psycopg cursor."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows


class AsyncConn:
    """An asyncpg connection with the small psycopg-like surface the repositories use.

    A transaction begins with the first statement after a commit or a rollback, as in
    psycopg's default mode. Driver errors come out as SQLAlchemy's (`_sa_error`), so that the
    repositories and handlers never see the driver.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._in_transaction = False

    @property
    def closed(self) -> bool:
        return bool(self.raw.is_closed())

    @property
    def idle(self) -> bool:
        """Open and outside any transaction: fit to go back to the pool."""
        return not self.raw.is_closed() and not self.raw.is_in_transaction()

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> Rows:
        text, names = _positional(sql)
        args = [params[name] for name in names] if params else []
        try:
            if not self._in_transaction:
                await self.raw.execute("BEGIN")
                self._in_transaction = True
            return Rows(await self.raw.fetch(text, *args))
        except _driver_errors() as exc:
            raise _sa_error(exc, closed=self.closed) from exc

    async def commit(self) -> None:
        await self._end("COMMIT")

    async def rollback(self) -> None:
        await self._end("ROLLBACK")

    async def _end(self, command: str) -> None:
        if not self._in_transaction:
            return
        self._in_transaction = False
        try:
            await self.raw.execute(command)
        except _driver_errors() as exc:
            raise _sa_error(exc, closed=self.closed) from exc

    async def close(self) -> None:
        try:
            await self.raw.close(timeout=2)
        except Exception:
            self.raw.terminate()


class AsyncScope:
    """One connection and transaction of the async paths; `transaction()` commits it."""

    def __init__(self, conn: AsyncConn) -> None:
        self.conn = conn
        # Read with the token (auth.authenticate_async), for registry.snapshot.current_async.
        self.registry_stamp: str | None = None
        self.stamp_read = False
        self._after_commit: dict[str, Callable[[], None]] = {}

    def after_commit(self, name: str, hook: Callable[[], None]) -> None:
        """Run `hook` once (per `name`) after this transaction has committed."""
        self._after_commit[name] = hook

    async def rollback(self) -> None:
        """Discard this transaction's writes and wake-ups; later statements start a new one."""
        self._after_commit.clear()
        await self.conn.rollback()


async def _connect(dsn: str) -> AsyncConn:
    import asyncpg

    raw = await asyncpg.connect(
        dsn, server_settings={"synchronous_commit": "on", "timezone": "UTC"}
    )
    # JSON columns in and out as Python values, as SQLAlchemy's JSON types give them.
    for name in ("json", "jsonb"):
        await raw.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return AsyncConn(raw)


class _AsyncPool:
    """A small pool of asyncpg connections for one event loop (at most `size` open).

    An idle connection the server ended (a PostgreSQL restart ends every backend) is seen
    without a round trip: asyncpg's protocol reads the server's goodbye on the event loop and
    marks the connection closed, and such a connection is never handed out.
    """

    def __init__(self, dsn: str, size: int) -> None:
        import asyncio

        self.dsn = dsn
        self._idle: list[AsyncConn] = []
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> AsyncConn:
        from sqlalchemy import exc as sa_exc

        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                await conn.close()
            try:
                return await _connect(self.dsn)
            except _driver_errors() as exc:  # refused, unreachable, or turned away: 503
                raise sa_exc.OperationalError(None, None, exc) from exc
        except BaseException:
            self._slots.release()
            raise

    async def discard_idle(self) -> None:
        """Close every idle connection (after a connection failed: the server may be new)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def release(self, conn: AsyncConn) -> None:
        try:
            if conn.idle:
                self._idle.append(conn)
            else:
                await conn.close()
        finally:
            self._slots.release()

    async def close(self) -> None:
        await self.discard_idle()


_pools: dict[int, tuple[Any, _AsyncPool]] = {}


def async_enabled() -> bool:
    """Whether the async paths serve this database (PostgreSQL; SQLite stays sync)."""
    return engine().dialect.name == "postgresql"


def _abandon(conn: AsyncConn) -> None:
    """Close the socket of a connection whose event loop has ended (asyncpg cannot: closing
    needs the loop). Only test runs end loops with connections open (one `asyncio.run` each);
    the server closes the pool in its lifespan."""
    conn.raw._aborted = True  # closed, for `is_closed()` and its finaliser
    transport = getattr(conn.raw, "_transport", None)
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
        transport._sock = None  # type: ignore[union-attr]  # its finaliser has nothing to warn


@atexit.register
def _abandon_stale_pools() -> None:
    """Drop the pools of event loops that have ended (at `_pool()` and at exit)."""
    for key, (loop, stale) in list(_pools.items()):
        if loop.is_closed():
            del _pools[key]
            for conn in stale._idle:
                _abandon(conn)


def _pool() -> _AsyncPool:
    import asyncio

    loop = asyncio.get_running_loop()
    entry = _pools.get(id(loop))
    if entry is None or entry[0] is not loop:
        _abandon_stale_pools()
        url = engine().url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        entry = (loop, _AsyncPool(dsn, settings().db_pool_size))
        _pools[id(loop)] = entry
    pool: _AsyncPool = entry[1]
    return pool


async def close_async_pool() -> None:
    """Close this event loop's idle connections (application shutdown)."""
    import asyncio

    entry = _pools.pop(id(asyncio.get_running_loop()), None)
    if entry is not None:
        await entry[1].close()


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncScope]:
    """Commit on success, roll back on error: the async twin of `session_scope`."""
    from sqlalchemy import exc as sa_exc

    pool = _pool()
    conn = await pool.acquire()
    try:
        try:
            scope = AsyncScope(conn)
            yield scope
            await conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    await conn.rollback()
                except Exception:
                    await conn.close()
            raise
    except sa_exc.OperationalError:
        await pool.discard_idle()  # as SQLAlchemy invalidates its pool on a disconnect
        raise
    finally:
        await pool.release(conn)
    for hook in scope._after_commit.values():
        hook()
