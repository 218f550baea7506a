"""transparency log: leaves, nodes and checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 19:57:18.219483
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "log_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "index", name=op.f("pk_log_nodes")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "log_leaves",
        sa.Column(
            "index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("leaf_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["audit_events.id"], name=op.f("fk_log_leaves_event_id_audit_events")
        ),
        sa.PrimaryKeyConstraint("index", name=op.f("pk_log_leaves")),
        sa.UniqueConstraint("event_id", name=op.f("uq_log_leaves_event_id")),
    )
    if op.get_bind().dialect.name == "sqlite":
        # 0001 made this index partial on PostgreSQL only; the sequencer needs it on SQLite too.
        op.drop_index("ix_audit_events_unsequenced", table_name="audit_events")
        op.create_index(
            "ix_audit_events_unsequenced",
            "audit_events",
            ["created_at"],
            unique=False,
            postgresql_where="leaf_index is null",
            sqlite_where=sa.text("leaf_index is null"),
        )


def downgrade() -> None:

    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_audit_events_unsequenced", table_name="audit_events")
        op.create_index("ix_audit_events_unsequenced", "audit_events", ["created_at"], unique=False)
    op.drop_table("log_leaves")
    op.drop_table("log_nodes")
    op.drop_table("checkpoints")
