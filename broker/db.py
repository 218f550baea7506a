"""The database: SQLAlchemy's async engine, the declarative base, and the one place that commits.

Every service is `async def` over an `AsyncSession` and runs on both backends: PostgreSQL over
asyncpg in production, SQLite over aiosqlite on the embedded default. Statements are written
once and compiled per dialect by SQLAlchemy; the pool, connections and transactions are
SQLAlchemy's. `session_scope()` is the one owner of commit and rollback; services only flush.

Sync callers (the CLI, Celery tasks, the embedded ticker, tests) run the same services through
`run` and `call`, on one event loop per process (anyio's blocking portal), never through a
second, sync copy. asyncpg connections belong to the event loop that opened them, so the
engine is per event loop: the server's loop, the portal's, and each test client's; each is
disposed on its own loop (`dispose`, in the application's shutdown; `reset_engine`).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal
from sqlalchemy import JSON, DateTime, MetaData, event, exc
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

from broker.config import settings

T = TypeVar("T")
C = TypeVar("C", bound=Callable[[], None])
P = ParamSpec("P")

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


SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL with synchronous=FULL: an accepted message survives power loss (NORMAL would not).
    # No driver-managed transactions: the "begin" listener takes the write lock up front, so
    # concurrent writers queue on busy_timeout instead of failing on a lock upgrade.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # secure_delete: a purged envelope is overwritten in the file, not left in a free page.
    # Debian's SQLite is built with it on; other builds (pyenv's, macOS's) are not.
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "foreign_keys=ON",
        "busy_timeout=10000",
        "secure_delete=ON",
    ):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def until_short(
    session_factory: SessionFactory,
    step: Callable[[AsyncSession], Awaitable[int]],
    batch: int,
    *,
    rest: float = 0.0,
) -> int:
    """Run `step` in a transaction of its own, again while it did a whole `batch`; the total.
    Each batch commits alone: a crash loses at most the batch in progress, which the next run
    takes again. `rest`: after each whole batch, pause that many times as long as it took."""
    loop = asyncio.get_running_loop()
    total = 0
    while True:
        started = loop.time()
        async with session_factory() as session:
            done = await step(session)
        total += done
        if done < batch:
            return total
        if rest:
            await asyncio.sleep((loop.time() - started) * rest)


async def sqlite_truncate_wal() -> None:
    """SQLite: move the write-ahead log into the database file and empty it, so that content
    the broker deleted (overwritten in the file by secure_delete) leaves no copy in the log.
    Nothing on PostgreSQL, whose dumps and backups hold live rows only."""
    if not settings().is_sqlite:
        return
    async with engine().connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _sqlite_file(url: str) -> None:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def async_url(url: str) -> str:
    """The configured URL with the async driver: asyncpg for PostgreSQL, aiosqlite for SQLite."""
    parsed = make_url(url)
    driver = "sqlite+aiosqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+asyncpg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def make_engine(url: str) -> AsyncEngine:
    """An async engine with the durability settings the broker promises."""
    cfg = settings()
    url = async_url(url)
    if url.startswith("sqlite"):
        _sqlite_file(url)
        engine = create_async_engine(url, connect_args={"timeout": 10})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    engine = create_async_engine(
        url,
        pool_size=cfg.db_pool_size,
        max_overflow=cfg.db_max_overflow,
        async_creator=_asyncpg_connect(url),
    )
    event.listen(engine.sync_engine, "handle_error", _by_sqlstate)
    event.listen(engine.sync_engine, "checkout", _closed_by_server)
    return engine


def _closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection that the server has closed (a PostgreSQL restart).

    SQLAlchemy's documented custom disconnect check: the pool then discards it and checks out
    another. asyncpg reads the server's goodbye on the event loop and marks the connection
    closed, so this costs no round trip, where `pool_pre_ping` would cost one per request.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the server closed this connection")


# SQLSTATE classes as PostgreSQL's own drivers classify them (asyncpg's SQLAlchemy adapter
# leaves most of them a plain DBAPIError): refused data is the client's (422), a lost or
# refused server is an outage (503).
_SQLSTATE_CLASSES: dict[str, type[exc.DBAPIError]] = {
    "22": exc.DataError,
    "08": exc.OperationalError,
    "53": exc.OperationalError,
    "57": exc.OperationalError,
    "58": exc.OperationalError,
}


def _by_sqlstate(context: ExceptionContext) -> exc.DBAPIError | None:
    state = getattr(context.original_exception, "sqlstate", None) or ""
    wanted = _SQLSTATE_CLASSES.get(state[:2])
    found = context.sqlalchemy_exception
    if wanted is None or found is None or isinstance(found, wanted):
        return None
    original = context.original_exception
    return wanted(
        found.statement, found.params, original, connection_invalidated=context.is_disconnect
    )


def _asyncpg_connect(url: str) -> Callable[[], Awaitable[Any]]:
    """asyncpg's connect, with the session settings, whose failures are OperationalErrors.

    SQLAlchemy passes a failed connect of an async driver through unwrapped (an OSError or an
    asyncpg error: sqlalchemy#11956); wrapped, the API answers 503 as for any lost database.
    """
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def connect() -> Any:
        try:
            return await asyncpg.connect(
                dsn,
                timeout=10,
                server_settings={"synchronous_commit": "on", "timezone": "UTC"},
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise exc.OperationalError("connect", None, error) from error

    return connect


def dialect_name() -> str:
    """`postgresql` or `sqlite`: the configured backend."""
    return make_url(settings().sqlalchemy_url).get_backend_name()


def insert_for(table: Any) -> Any:
    """The backend's INSERT construct, for `ON CONFLICT` (the same API on both dialects)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql if dialect_name() == "postgresql" else sqlite).insert(table)


# asyncpg connections are bound to the loop that opened them: one engine per running loop.
_engines: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
_engines_lock = threading.Lock()


def engine() -> AsyncEngine:
    """The running event loop's engine, created on first use."""
    loop = asyncio.get_running_loop()
    with _engines_lock:
        found = _engines.get(loop)
        if found is None:
            found = _engines[loop] = make_engine(settings().sqlalchemy_url)
        return found


_on_dispose: list[Callable[[], Awaitable[None]]] = []


def on_dispose(fn: Callable[[], Awaitable[None]]) -> None:
    """Also run `fn` on the ending loop when `dispose` closes its connections (other clients)."""
    _on_dispose.append(fn)


async def dispose() -> None:
    """Close this event loop's connections (application shutdown, the end of a test client)."""
    for fn in _on_dispose:
        await fn()
    with _engines_lock:
        found = _engines.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.dispose()


def reset_engine() -> None:
    """Dispose every engine (after `config.configure`, or in tests), each on its own loop."""
    with _engines_lock:
        engines = list(_engines.items())
        _engines.clear()
    for loop, found in engines:
        if loop.is_closed():
            continue
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(found.dispose(), loop)
            if not _on_loop_thread(loop):
                future.result(timeout=10)
        else:
            loop.run_until_complete(found.dispose())


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_AFTER_COMMIT = "broker.after_commit"


def after_commit(session: AsyncSession, key: Hashable, fn: C) -> C:
    """Run `fn` once per `key` after this session's transaction commits; a rollback drops it.

    Returns the callable registered under `key` (the first one). Wake-ups, metrics and inbox
    notifications go through here, so that nothing is announced that did not commit.
    """
    registered: C = session.info.setdefault(_AFTER_COMMIT, {}).setdefault(key, fn)
    return registered


@event.listens_for(Session, "after_rollback")
def _forget_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


@asynccontextmanager
async def session_scope() -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on error. Services only flush."""
    async with AsyncSession(engine(), expire_on_commit=False) as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    for fn in session.info.pop(_AFTER_COMMIT, {}).values():
        fn()


async def get_session() -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, committed by `session_scope`."""
    async with session_scope() as session:
        yield session


# --- sync callers: one event loop per process ------------------------------------------------

_portal: tuple[int, BlockingPortal, ExitStack] | None = None
_portal_lock = threading.Lock()


def _blocking_portal() -> BlockingPortal:
    global _portal
    with _portal_lock:
        if _portal is None or _portal[0] != os.getpid():  # a forked child starts its own
            stack = ExitStack()
            portal = stack.enter_context(start_blocking_portal())
            _portal = (os.getpid(), portal, stack)
            # Stopped before the interpreter freezes daemon threads, or the exit waits on it.
            atexit.register(close_portal)
        return _portal[1]


def run(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the coroutine function `fn` to completion from sync code (CLI, tasks, tests).

    On this process's own event loop, which keeps its engine and pool between calls.
    """

    async def call() -> T:
        return await fn(*args, **kwargs)

    return _blocking_portal().call(call)


def call(
    fn: Callable[Concatenate[AsyncSession, P], Awaitable[T]], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run `fn(session, ...)` in one transaction from sync code, committed before this returns."""

    async def scoped() -> T:
        async with session_scope() as session:
            return await fn(session, *args, **kwargs)

    return run(scoped)


def close_portal() -> None:
    """Dispose the sync callers' engine and stop their event loop (process exit, tests)."""
    global _portal
    with _portal_lock:
        found, _portal = _portal, None
    if found is not None and found[0] == os.getpid():
        found[1].call(dispose)
        found[2].close()
