"""Engine, declarative base with a naming convention, and the one place that commits."""

from __future__ import annotations

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


# --- the async submit path (PostgreSQL) -----------------------------------------------------
#
# `POST /v1/messages` runs on the event loop with psycopg's async connection instead of a
# worker thread with a Session: under load the thread hand-offs and GIL waits cost more than
# the submit itself (docs/performance.md). `transaction()` below is that path's one place
# that commits or rolls back, as `session_scope` is for everything else. The statements are
# plain SQL in the repositories; the rules are the same functions as the sync path's.


class AsyncScope:
    """One connection and transaction of the async submit path; `transaction()` commits it."""

    def __init__(self, conn: Any) -> None:
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


class _AsyncPool:
    """A small pool of psycopg async connections for one event loop (at most `size` open)."""

    def __init__(self, conninfo: str, size: int) -> None:
        import asyncio

        self.conninfo = conninfo
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> Any:
        import psycopg

        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if _alive(conn):
                    return conn
                await conn.close()  # the server ended it (a restart): never hand it out
            return await psycopg.AsyncConnection.connect(
                self.conninfo, options="-c synchronous_commit=on -c timezone=UTC"
            )
        except BaseException:
            self._slots.release()
            raise

    async def discard_idle(self) -> None:
        """Close every idle connection (after a connection failed: the server may be new)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def release(self, conn: Any) -> None:
        from psycopg.pq import TransactionStatus

        try:
            if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                await conn.close()
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _alive(conn: Any) -> bool:
    """Whether an idle connection is still open, without a round trip.

    An idle connection has nothing to read (the broker never LISTENs): if its socket is
    readable, the server sent an error or closed it, as PostgreSQL does to every backend when it
    shuts down. This is the async pool's pre-ping, at the cost of one `select` call.
    """
    import select

    if conn.closed:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


_pools: dict[int, tuple[Any, _AsyncPool]] = {}


def async_enabled() -> bool:
    """Whether the async submit path serves this database (PostgreSQL; SQLite stays sync)."""
    return engine().dialect.name == "postgresql"


def _pool() -> _AsyncPool:
    import asyncio

    loop = asyncio.get_running_loop()
    entry = _pools.get(id(loop))
    if entry is None or entry[0] is not loop:
        for key, (other, stale) in list(_pools.items()):
            if other.is_closed():  # a finished event loop (tests): close at the libpq level
                del _pools[key]
                for conn in stale._idle:
                    conn.pgconn.finish()
        url = engine().url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        entry = (loop, _AsyncPool(conninfo, settings().db_pool_size))
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
    """Commit on success, roll back on error: the async twin of `session_scope`.

    Not in psycopg's pipeline mode: it would save the BEGIN's round trip, but its polling
    loop cost more CPU than the round trip (measured, docs/performance.md).
    """
    import psycopg
    from sqlalchemy import exc as sa_exc

    pool = _pool()
    try:
        conn = await pool.acquire()
    except psycopg.OperationalError as exc:
        raise sa_exc.OperationalError(None, None, exc) from exc
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
    # The errors the sync path's handlers answer (503, 400), as SQLAlchemy would wrap them.
    except psycopg.OperationalError as exc:
        await pool.discard_idle()  # as SQLAlchemy invalidates its pool on a disconnect
        raise sa_exc.OperationalError(None, None, exc) from exc
    except psycopg.DataError as exc:
        raise sa_exc.DataError(None, None, exc) from exc
    finally:
        await pool.release(conn)
    for hook in scope._after_commit.values():
        hook()
