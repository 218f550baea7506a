"""Migrations: one head, up and down on both backends, and models that match them."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from broker import db, migrations_check
from broker.models import Base


def on_connection(fn: Any) -> Any:
    """`fn(sync_connection)` on the broker's async engine (Alembic and the inspector are sync)."""

    async def go() -> Any:
        async with db.engine().connect() as conn:
            return await conn.run_sync(fn)

    return db.run(go)


def table_names() -> set[str]:
    return set(on_connection(lambda conn: inspect(conn).get_table_names()))


def test_single_head() -> None:
    script = ScriptDirectory.from_config(migrations_check.alembic_config())
    assert len(script.get_heads()) == 1


def test_models_match_migrations(backend: str) -> None:
    diff = on_connection(
        lambda conn: compare_metadata(MigrationContext.configure(conn), Base.metadata)
    )
    assert diff == []


def test_downgrade_to_base_and_up_again(backend: str) -> None:
    migrations_check.downgrade("base")
    try:
        assert table_names() - {"alembic_version"} == set()
        assert not db.run(migrations_check.is_current)
    finally:
        migrations_check.upgrade()
    assert db.run(migrations_check.is_current)
    assert set(Base.metadata.tables) <= table_names()


def test_every_revision_steps_down_and_up(backend: str) -> None:
    script = ScriptDirectory.from_config(migrations_check.alembic_config())
    revisions = [r.revision for r in script.walk_revisions()]
    for revision in revisions:
        migrations_check.downgrade("-1")
        migrations_check.upgrade("+1")
        assert db.run(migrations_check.current) == script.get_current_head(), revision


def test_durability_settings(backend: str) -> None:
    def settings(conn: Connection) -> None:
        if backend == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "UTC"

    on_connection(settings)
