"""Alembic from code: apply migrations, and refuse to serve an unmigrated database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from broker import db


class NotMigrated(RuntimeError):
    """The database schema is not at the code's head revision."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option(
        "file_template", "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s"
    )
    return cfg


def upgrade(revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    command.upgrade(alembic_config(), revision)


def downgrade(revision: str) -> None:
    command.downgrade(alembic_config(), revision)


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current() -> str | None:
    """The database's revision (None before the first migration)."""
    async with db.engine().connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def is_current() -> bool:
    return await current() == head()


async def require_current() -> None:
    """Raise with the fix if the schema is behind (or ahead of) the code."""
    have, want = await current(), head()
    if have != want:
        raise NotMigrated(
            f"database schema is at {have or 'nothing'}, the code needs {want}: run `broker migrate`"
        )
