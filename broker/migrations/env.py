"""Alembic environment: the broker's own async engine and metadata; batch mode on SQLite."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from broker import db
from broker.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_engine() -> None:
    async with db.engine().connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()


def run_migrations_online() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        db.run(_run_on_engine)


run_migrations_online()
