"""lifecycle: retention purges, legal holds and corrections

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 18:40:00

Once an agreement's retention has passed since a message was accepted, the lifecycle job
empties its envelope and the recipients' acknowledgements and sets `messages.purged_at`; the
row stays as the replay guard and the log's reference (`broker/lifecycle/service.py`).
`legal_holds` suspends the purge of a named message until lifted, with a partial index on the
holds still active, which is what the purge asks about. `messages.supersedes` names the earlier
message a correction replaces, unique per sender: a message is corrected once (correct the
correction to go further).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("supersedes", sa.Uuid(), nullable=True))
        batch_op.create_unique_constraint(
            op.f("uq_messages_sender_supersedes"), ["sender", "supersedes"]
        )
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("reference", sa.String(length=120), nullable=False),
        sa.Column("placed_by", sa.String(length=120), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_by", sa.String(length=120), nullable=True),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lift_reason", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_legal_holds_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_legal_holds_active",
            ["message_id"],
            unique=False,
            postgresql_where=sa.text("lifted_at is null"),
            sqlite_where=sa.text("lifted_at is null"),
        )


def downgrade() -> None:
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_legal_holds_active",
            postgresql_where=sa.text("lifted_at is null"),
            sqlite_where=sa.text("lifted_at is null"),
        )
    op.drop_table("legal_holds")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_messages_sender_supersedes"), type_="unique")
        batch_op.drop_column("supersedes")
        batch_op.drop_column("purged_at")
