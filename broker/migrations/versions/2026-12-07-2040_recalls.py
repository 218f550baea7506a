"""recalls: a sender withdraws a message; recipients holding it answer with compliance

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 20:40:00

`recalls` keeps the sender's signed recall of a message (one per message) and
`recall_recipients` what became of each copy: `withdrawn` unread (the delivery's state becomes
`recalled`), or `notified` through a recall notice, a message of kind `recall` carried to the
recipients that had fetched it, and then their signed answer (`erased` or `retained`). The
partial index finds the answers still awaited (`broker/recalls/repository.py`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = "state in ('queued', 'available', 'fetched', 'acknowledged', 'expired'"
KINDS = "kind in ('alert', 'feedback'"
_AWAITING = "outcome = 'notified' and compliance is null"


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_deliveries_state"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_deliveries_state"), sa.text(STATES + ", 'recalled')")
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_messages_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_messages_kind"), sa.text(KINDS + ", 'recall')"))
    op.create_table(
        "recalls",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("notice_id", sa.Uuid(), nullable=True),
        sa.Column("rid", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.Column("legal_reference", sa.String(length=120), nullable=True),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=43), nullable=False),
        sa.Column("recalled_by", sa.String(length=64), nullable=False),
        sa.Column("recalled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_recalls_message_id_messages")
        ),
        sa.ForeignKeyConstraint(
            ["notice_id"], ["messages.id"], name=op.f("fk_recalls_notice_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recalls")),
        sa.UniqueConstraint("message_id", name=op.f("uq_recalls_message_id")),
    )
    op.create_table(
        "recall_recipients",
        sa.Column("recall_id", sa.Uuid(), nullable=False),
        sa.Column("recipient", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("compliance", sa.String(length=12), nullable=True),
        sa.Column("legal_ground", sa.String(length=120), nullable=True),
        sa.Column("compliance_jws", sa.Text(), nullable=True),
        sa.Column("compliance_sha256", sa.String(length=43), nullable=True),
        sa.Column("complied_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "outcome in ('withdrawn', 'notified')", name=op.f("ck_recall_recipients_outcome")
        ),
        sa.CheckConstraint(
            "compliance in ('erased', 'retained')", name=op.f("ck_recall_recipients_compliance")
        ),
        sa.ForeignKeyConstraint(
            ["recall_id"], ["recalls.id"], name=op.f("fk_recall_recipients_recall_id_recalls")
        ),
        sa.ForeignKeyConstraint(
            ["recipient"], ["agencies.id"], name=op.f("fk_recall_recipients_recipient_agencies")
        ),
        sa.PrimaryKeyConstraint("recall_id", "recipient", name=op.f("pk_recall_recipients")),
    )
    with op.batch_alter_table("recall_recipients", schema=None) as batch_op:
        batch_op.create_index(
            "ix_recall_recipients_awaiting",
            ["recall_id"],
            unique=False,
            postgresql_where=sa.text(_AWAITING),
            sqlite_where=sa.text(_AWAITING),
        )


def downgrade() -> None:
    with op.batch_alter_table("recall_recipients", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_recall_recipients_awaiting",
            postgresql_where=sa.text(_AWAITING),
            sqlite_where=sa.text(_AWAITING),
        )
    op.drop_table("recall_recipients")
    op.drop_table("recalls")
    op.execute(sa.text("delete from messages where kind = 'recall'"))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_messages_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_messages_kind"), sa.text(KINDS + ")"))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_deliveries_state"), type_="check")
        batch_op.execute(
            sa.text("update deliveries set state = 'fetched' where state = 'recalled'")
        )
        batch_op.create_check_constraint(op.f("ck_deliveries_state"), sa.text(STATES + ")"))
