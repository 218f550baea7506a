"""Test fixtures: every database test runs on the embedded default (SQLite) and on PostgreSQL.

PostgreSQL and Redis are real. Point the tests at servers with BROKER_TEST_DATABASE_URL and
BROKER_TEST_REDIS_URL; without them the dependent tests skip, except under CI=true, where a
missing server is a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VECTORS = SHARED / "vectors"
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get(
    "BROKER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Machine-wide: fault drills restart PostgreSQL and Redis, which every test run on this machine
# shares. Ordinary tests hold this lock shared; a drill holds it exclusively (`exclusive_servers`).
SERVER_LOCK = Path(os.environ.get("BROKER_TEST_SERVER_LOCK", "/tmp/broker-test-servers.lock"))


@contextlib.contextmanager
def server_lock(*, exclusive: bool) -> Iterator[None]:
    """Hold the machine-wide server lock (shared, or exclusive for a drill) while inside."""
    with SERVER_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _servers_steady(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test runs while a drill (in this run or another) has a server down, and vice versa."""
    with server_lock(exclusive="exclusive_servers" in request.fixturenames):
        yield


@pytest.fixture
def exclusive_servers() -> None:
    """Ask for this in a drill that stops, restarts or flushes PostgreSQL or Redis."""


def unavailable(what: str, setting: str, exc: Exception) -> None:
    """Skip on a developer's machine, fail in CI: the real component is required there."""
    message = f"{what} not reachable ({type(exc).__name__}: {exc}); set {setting} to point the tests at one"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _run_id() -> str:
    """Unique per pytest run, shared by its xdist workers: two runs never share a database."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))[:10]


def _postgres_admin(sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    plain = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with (
        server_lock(exclusive=False),
        psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn,
    ):
        conn.execute(sql)  # type: ignore[arg-type]


def _postgres_db_name() -> str:
    return f"broker_test_{_run_id()}_{_worker()}"


def _postgres_url() -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    name = _postgres_db_name()
    try:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _postgres_admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", "BROKER_TEST_DATABASE_URL", exc)
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (database 15, flushed) or a skip with the setting to use."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        client.ping()
        client.flushdb()
    except redis.RedisError as exc:
        unavailable("Redis", "BROKER_TEST_REDIS_URL", exc)
    return REDIS_URL


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Configure the broker for one backend and migrate it; yields the backend's name."""
    from broker import config, db, migrations_check

    tmp = tmp_path_factory.mktemp(f"broker-{request.param}")
    url = f"sqlite:///{tmp / 'broker.db'}" if request.param == "sqlite" else _postgres_url()
    config.configure(
        database_url=url,
        data_dir=tmp,
        keys_dir=tmp / "keys",
        # Real secrets, so that the production-profile processes the drills start (which
        # refuse placeholders) share this process's tokens and keys (tests/inbox/stack.py).
        token_pepper=secrets.token_urlsafe(32),
        key_passphrase=secrets.token_urlsafe(24),
        metrics_token=SCRAPER_TOKEN,
        log_level="WARNING",
        log_json=True,
        # One test process starts hundreds of apps: freezing each start-up heap would keep
        # every earlier test's cycles alive. test_app.py checks the freeze itself.
        gc_freeze=False,
    )
    db.reset_engine()
    # Session and module fixtures run outside their tests' hold on the server lock: take it
    # (shared) here too, so that no drill restarts PostgreSQL in the middle.
    with server_lock(exclusive=False):
        migrations_check.upgrade()
    yield request.param
    db.reset_engine()
    db.close_portal()
    if request.param == "postgresql":
        with server_lock(exclusive=False):
            _postgres_admin(f'DROP DATABASE IF EXISTS "{_postgres_db_name()}" WITH (FORCE)')


@pytest.fixture
def clean_db(backend: str) -> Iterator[str]:
    """Each test starts from empty tables (the schema stays)."""
    yield backend
    from sqlalchemy import delete

    from broker import db
    from broker.models import Base

    async def empty(session: Any) -> None:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(delete(table))

    db.call(empty)


@pytest.fixture(scope="session")
def app(backend: str) -> Any:
    from broker.main import create_app

    return create_app()


@pytest.fixture
def client(app: Any, clean_db: str) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def world(clean_db: str) -> dict[str, Any]:
    """The world of ARCHITECTURE.md section 2, loaded through the registry services."""
    from broker import db
    from broker import world as world_mod

    doc = world_mod.demo_world()
    db.call(world_mod.load_world, doc, actor="test")
    return doc


TokenFactory = Callable[..., str]


@pytest.fixture
def token_for(clean_db: str) -> TokenFactory:
    """`token_for("agency", agency_id="HK-CED")` -> a bearer token for a new principal."""
    from broker import db
    from broker.auth import service
    from broker.auth.service import Role

    async def issue(s: Any, role: str, ttl_days: int | None, binding: dict[str, Any]) -> str:
        principal = await service.create_principal(
            s, name=f"{role}-{uuid.uuid4().hex[:8]}", role=Role(role), actor="test", **binding
        )
        _, secret = await service.issue_token(s, principal, actor="test", ttl_days=ttl_days)
        return secret

    def make(role: str, *, ttl_days: int | None = None, **binding: Any) -> str:
        return db.call(issue, role, ttl_days, binding)

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# The metrics scraper's credential in every test configuration (BROKER_METRICS_TOKEN).
SCRAPER_TOKEN = secrets.token_urlsafe(32)
SCRAPER = bearer(SCRAPER_TOKEN)


@pytest.fixture
def admin_headers(token_for: TokenFactory) -> dict[str, str]:
    return bearer(token_for("admin"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `postgres` run on the PostgreSQL backend only (deselected, not skipped)."""
    keep, drop = [], []
    for item in items:
        on_sqlite = (
            getattr(item, "callspec", None) is not None
            and item.callspec.params.get("backend") == "sqlite"
        )
        (drop if on_sqlite and item.get_closest_marker("postgres") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_url(clean_db: str) -> Iterator[str]:
    """A real uvicorn serving the app on a free port, for clients that speak real HTTP."""
    from broker.demo import ServerThread

    server = ServerThread(free_port())
    server.start()
    server.wait_started()
    yield f"http://127.0.0.1:{server.server.config.port}"
    server.stop()
