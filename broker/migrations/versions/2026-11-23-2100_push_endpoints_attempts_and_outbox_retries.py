"""push endpoints, push attempts, and outbox retries (attempt schedule and dead letters)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 21:00:00

The outbox gets its retry schedule (`next_attempt_at`, also a push lease), the last error and
a dead-letter time; its pending index now covers the topic and leaves dead rows out. Push
delivery adds one endpoint per agency and one row per POST attempt. No registry table is
touched, so the registry stamp triggers of 0004 stay as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("next_attempt_at", sa.DateTime(timezone=True)))
    op.add_column("outbox", sa.Column("last_error", sa.String(length=200)))
    op.add_column("outbox", sa.Column("dead_at", sa.DateTime(timezone=True)))
    op.drop_index("ix_outbox_pending", table_name="outbox", postgresql_where="done_at is null")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["topic", "id"],
        unique=False,
        postgresql_where="done_at is null and dead_at is null",
        sqlite_where=sa.text("done_at is null and dead_at is null"),
    )
    op.create_table(
        "push_endpoints",
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_push_endpoints_agency_id_agencies")
        ),
        sa.PrimaryKeyConstraint("agency_id", name=op.f("pk_push_endpoints")),
    )
    op.create_table(
        "push_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('sending', 'delivered', 'retry', 'failed', 'dead', 'lost')",
            name=op.f("ck_push_attempts_status"),
        ),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_push_attempts_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], name=op.f("fk_push_attempts_delivery_id_deliveries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_attempts")),
    )
    op.create_index("ix_push_attempts_delivery_id", "push_attempts", ["delivery_id"])
    op.create_index("ix_push_attempts_outbox_id", "push_attempts", ["outbox_id"])


def downgrade() -> None:
    op.drop_index("ix_push_attempts_outbox_id", table_name="push_attempts")
    op.drop_index("ix_push_attempts_delivery_id", table_name="push_attempts")
    op.drop_table("push_attempts")
    op.drop_table("push_endpoints")
    op.drop_index(
        "ix_outbox_pending",
        table_name="outbox",
        postgresql_where="done_at is null and dead_at is null",
        sqlite_where=sa.text("done_at is null and dead_at is null"),
    )
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], unique=False, postgresql_where="done_at is null"
    )
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("dead_at")
        batch.drop_column("last_error")
        batch.drop_column("next_attempt_at")
