"""registry stamp: one row that triggers change with every registry write

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 20:30:00

The submit path keeps an in-process snapshot of the registry (keys, agreements, operations,
focal points, designations) and checks this stamp once per request (broker/registry).
Triggers, not application code, change the stamp, so that every write invalidates the
snapshot in the same transaction, whichever code or operator makes it.

SQLite: a batch (copy-and-move) migration of a registry table drops its triggers; such a
migration must create them again (`create_triggers`). tests/foundation/test_registry_stamp.py
checks every table on both backends.
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REGISTRY_TABLES = (
    "agencies",
    "focal_points",
    "keys",
    "agreements",
    "agreement_versions",
    "operations",
    "designations",
)
_OPS = ("insert", "update", "delete")


def create_triggers(dialect: str, tables: Sequence[str] = REGISTRY_TABLES) -> None:
    """The restamping triggers on `tables` (the functions exist from this revision on)."""
    for table in tables:
        if dialect == "postgresql":
            op.execute(
                f"CREATE TRIGGER registry_restamp AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
                f" ON {table} FOR EACH STATEMENT EXECUTE FUNCTION registry_restamp()"
            )
        else:
            for action in _OPS:
                # Table names are the constants above.
                head = f"CREATE TRIGGER registry_restamp_{table}_{action}"
                body = "UPDATE registry_state SET stamp = lower(hex(randomblob(16))) WHERE id = 1"
                op.execute(f"{head} AFTER {action.upper()} ON {table} BEGIN {body}; END")


def upgrade() -> None:
    op.create_table(
        "registry_state",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("stamp", sa.String(length=32), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_registry_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_state")),
    )
    op.get_bind().execute(
        sa.text("INSERT INTO registry_state (id, stamp) VALUES (1, :stamp)"),
        {"stamp": uuid.uuid4().hex},
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION registry_restamp() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN UPDATE registry_state SET stamp = replace(gen_random_uuid()::text, '-', '')"
            " WHERE id = 1; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE FUNCTION registry_state_keep() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER registry_state_keep BEFORE DELETE ON registry_state"
            " FOR EACH ROW EXECUTE FUNCTION registry_state_keep()"
        )
    else:
        op.execute(
            "CREATE TRIGGER registry_state_keep BEFORE DELETE ON registry_state"
            " BEGIN SELECT RAISE(IGNORE); END"
        )
    create_triggers(dialect)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in REGISTRY_TABLES:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS registry_restamp ON {table}")
        else:
            for action in _OPS:
                op.execute(f"DROP TRIGGER IF EXISTS registry_restamp_{table}_{action}")
    op.drop_table("registry_state")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS registry_restamp()")
        op.execute("DROP FUNCTION IF EXISTS registry_state_keep()")
