"""The async engine's pool on PostgreSQL: a restarted or unreachable server, and driver errors.

PostgreSQL ends every backend when it restarts. The engine pings a pooled connection when it
is checked out (`pool_pre_ping`) and replaces one the server ended, so the next request is
served instead of failing with 503. A server that refuses connections is a 503 with
Retry-After. asyncpg's errors come out as the SQLAlchemy classes the handlers map (422, 503)
and the services catch (integrity), as on SQLite.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.config import settings

pytestmark = pytest.mark.postgres

REFUSED = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1


def _end_backends() -> list[int]:
    """What a restart does to every pool: end each client backend of the test database.

    From another connection, server side; returns once they are gone.
    """
    url = make_url(settings().sqlalchemy_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as admin:
        rows = admin.execute(
            "select pid, pg_terminate_backend(pid, 5000) from pg_stat_activity"
            " where datname = current_database() and backend_type = 'client backend'"
            " and pid <> pg_backend_pid()"
        ).fetchall()
        pids = [pid for pid, _ in rows]
        # False is also a backend that had gone by itself meanwhile: the app's ticker closes
        # its pool's other connections when one of them is ended. What counts: none is left.
        left = admin.execute(
            "select pid from pg_stat_activity where pid = any(%s)", (pids,)
        ).fetchall()
    assert left == [], (rows, left)
    return pids


async def _backend_pid(session: AsyncSession) -> int:
    return int((await session.execute(text("select pg_backend_pid()"))).scalar_one())


def test_a_connection_the_server_ended_is_replaced_not_used(backend: str) -> None:
    assert backend == "postgresql"
    first = db.call(_backend_pid)  # now idle in the pool of the sync callers' engine
    assert first in _end_backends()
    second = db.call(_backend_pid)  # the ping on checkout found it ended: a new connection
    assert second != first


def test_a_request_after_a_restart_is_served(client: Any, admin_headers: dict[str, str]) -> None:
    first = client.get("/v1/me", headers=admin_headers)  # leaves a connection in the app's pool
    assert first.status_code == 200, first.text
    assert _end_backends()
    again = client.get("/v1/me", headers=admin_headers)
    assert again.status_code == 200, again.text


def test_a_server_that_refuses_connections_is_a_503(
    client: Any, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening: 503 with Retry-After (not a 500), and served again once it is back."""
    assert client.get("/v1/me", headers=admin_headers).status_code == 200
    # The application's event loop drops its engine; its next request opens one on the
    # refused URL. The sync callers' engine (the ticker's) exists already and is kept.
    monkeypatch.setattr(settings(), "database_url", REFUSED)
    try:
        client.portal.call(db.dispose)
        refused = client.get("/v1/me", headers=admin_headers)
    finally:
        monkeypatch.undo()
        client.portal.call(db.dispose)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "service.unavailable"
    assert refused.headers["retry-after"] == "5"
    assert client.get("/v1/me", headers=admin_headers).status_code == 200


def test_driver_errors_come_out_as_the_classes_the_handlers_map(backend: str) -> None:
    """DataError is a 422 (PostgreSQL refuses NUL in text), IntegrityError a replay or conflict."""
    assert backend == "postgresql"

    async def nul(session: AsyncSession) -> None:
        await session.execute(text("select cast(:v as text)"), {"v": "a\x00b"})

    async def duplicate(session: AsyncSession) -> None:
        await session.execute(
            text("insert into registry_state (id, stamp) values (7, 'x'), (7, 'x')")
        )

    async def add(session: AsyncSession) -> int:
        return int(
            (await session.execute(text("select cast(:a as integer) * 2"), {"a": 2})).scalar_one()
        )

    with pytest.raises(sa_exc.DataError):
        db.call(nul)
    with pytest.raises(sa_exc.IntegrityError):
        db.call(duplicate)
    # The connections that failed went back to the pool in a clean state.
    assert db.call(add) == 4
