"""The async connection pool of the PostgreSQL hot paths (submit, poll, ack) survives a restart.

PostgreSQL ends every backend when it restarts. The sync engine pings on checkout; the async
pool needs no round trip: asyncpg reads the server's goodbye on the event loop and marks the
connection closed, and a closed one is replaced instead of failing the next request with 503.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from broker import db

pytestmark = pytest.mark.postgres


def _terminate(pids: list[int]) -> None:
    """What a restart does to the pool's backends: ends them from the server side."""
    url = db.engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("select pg_terminate_backend(%s)", (pid,))


async def _backend_pid() -> int:
    async with db.transaction() as scope:
        cur = await scope.conn.execute("select pg_backend_pid()")
        row = await cur.fetchone()
        return int(row[0])


def test_a_connection_the_server_ended_is_replaced_not_used(backend: str) -> None:
    assert backend == "postgresql"

    async def scenario() -> tuple[int, int]:
        first = await _backend_pid()  # now idle in the pool
        await asyncio.to_thread(_terminate, [first])
        await asyncio.sleep(0.2)  # the server's goodbye reaches the socket
        second = await _backend_pid()  # would raise OperationalError (503) on the dead one
        await db.close_async_pool()
        return first, second

    first, second = asyncio.run(scenario())
    assert first != second


def test_a_failed_connection_empties_the_idle_pool(backend: str) -> None:
    """When a connection fails anyway (the check saw nothing yet), the idle ones go too."""
    assert backend == "postgresql"

    async def scenario() -> tuple[int, int, int]:
        async def hold() -> int:
            async with db.transaction() as scope:
                cur = await scope.conn.execute("select pg_backend_pid()")
                row = await cur.fetchone()
                await asyncio.sleep(0.1)  # both open at once: two connections in the pool
                return int(row[0])

        pids = await asyncio.gather(hold(), hold())
        pool = db._pool()
        assert len(pool._idle) == 2
        with pytest.raises(sa_exc.OperationalError):
            async with db.transaction() as scope:
                await scope.conn.execute("select pg_terminate_backend(pg_backend_pid())")
        idle_after = len(pool._idle)
        await db.close_async_pool()
        return pids[0], pids[1], idle_after

    *_, idle_after = asyncio.run(scenario())
    assert idle_after == 0


def test_driver_errors_come_out_as_the_sync_paths(backend: str) -> None:
    """What the handlers answer (422, 503) and the services catch (integrity) on both paths."""
    assert backend == "postgresql"

    async def scenario() -> None:
        with pytest.raises(sa_exc.DataError):  # PostgreSQL refuses NUL in text: 422
            async with db.transaction() as scope:
                await scope.conn.execute("select %(v)s::text", {"v": "a\x00b"})
        with pytest.raises(sa_exc.IntegrityError):  # a duplicate key, rolled back
            async with db.transaction() as scope:
                await scope.conn.execute(
                    "insert into registry_state (id, stamp) values (7, 'x'), (7, 'x')"
                )
        # The connection that failed went back in a clean state: the next transaction works.
        async with db.transaction() as scope:
            row = await (
                await scope.conn.execute("select %(a)s::int + %(a)s::int", {"a": 2})
            ).fetchone()
            assert row[0] == 4
        await db.close_async_pool()

    asyncio.run(scenario())


def test_an_unreachable_server_is_an_operational_error(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening: 503 (OperationalError), as the sync engine answers."""
    assert backend == "postgresql"

    async def scenario() -> None:
        pool = db._pool()
        monkeypatch.setattr(pool, "dsn", "postgresql://postgres@127.0.0.1:1/nothing")
        with pytest.raises(sa_exc.OperationalError):
            async with db.transaction():
                pass
        await db.close_async_pool()

    asyncio.run(scenario())
