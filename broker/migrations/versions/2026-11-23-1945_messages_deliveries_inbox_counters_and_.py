"""messages, deliveries, inbox counters and outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 19:45:17.855931
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("topic", sa.String(length=32), nullable=False),
        sa.Column("ref", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_pending", ["id"], unique=False, postgresql_where="done_at is null"
        )

    op.create_table(
        "inbox_counters",
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_inbox_counters_agency_id_agencies")
        ),
        sa.PrimaryKeyConstraint("agency_id", name=op.f("pk_inbox_counters")),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("sender", sa.String(length=16), nullable=False),
        sa.Column("mid", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("sender_fp", sa.String(length=48), nullable=False),
        sa.Column("sender_kid", sa.String(length=43), nullable=False),
        sa.Column("agreement_id", sa.String(length=48), nullable=False),
        sa.Column("operation_id", sa.String(length=48), nullable=True),
        sa.Column("offence", sa.String(length=40), nullable=False),
        sa.Column("handling", sa.String(length=20), nullable=False),
        sa.Column(
            "routing",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("in_reply_to", sa.Uuid(), nullable=True),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("envelope_sha256", sa.String(length=43), nullable=False),
        sa.Column("policy_sha256", sa.String(length=43), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("iat", sa.BigInteger(), nullable=False),
        sa.Column("exp", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind in ('alert', 'feedback')", name=op.f("ck_messages_kind")),
        sa.ForeignKeyConstraint(
            ["sender"], ["agencies.id"], name=op.f("fk_messages_sender_agencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("sender", "mid", name="uq_messages_sender_mid"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_in_reply_to", ["in_reply_to"], unique=False)

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("recipient", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("inbox_seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_status", sa.String(length=12), nullable=True),
        sa.Column("ack_reason", sa.String(length=40), nullable=True),
        sa.Column("ack_sha256", sa.String(length=43), nullable=True),
        sa.Column("ack", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state in ('queued', 'available', 'fetched', 'acknowledged')",
            name=op.f("ck_deliveries_state"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_deliveries_message_id_messages")
        ),
        sa.ForeignKeyConstraint(
            ["recipient"], ["agencies.id"], name=op.f("fk_deliveries_recipient_agencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("message_id", "recipient", name="uq_deliveries_message_recipient"),
        sa.UniqueConstraint("recipient", "inbox_seq", name="uq_deliveries_recipient_seq"),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_queued", ["state", "created_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_queued")

    op.drop_table("deliveries")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_in_reply_to")

    op.drop_table("messages")
    op.drop_table("inbox_counters")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_pending", postgresql_where="done_at is null")

    op.drop_table("outbox")
