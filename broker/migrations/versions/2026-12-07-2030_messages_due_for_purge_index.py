"""messages: a partial index for the retention purge's search

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 20:30:00

The lifecycle job asks, per agreement, for the oldest messages not yet purged that were
accepted before its retention's start (`broker/lifecycle/repository.py`, `due_for_purge`).
Without an index that is a scan of the whole messages table (envelopes inline: gigabytes at
a million messages) for every batch of 200. `ix_messages_due_for_purge` on (agreement_id,
received_at, id), over the rows not yet purged only, answers it from the front of one range
of the index, and a purged message leaves the index, so it stays the size of what is kept.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEPT = "purged_at is null"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_due_for_purge",
            ["agreement_id", "received_at", "id"],
            unique=False,
            postgresql_where=sa.text(_KEPT),
            sqlite_where=sa.text(_KEPT),
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_messages_due_for_purge",
            postgresql_where=sa.text(_KEPT),
            sqlite_where=sa.text(_KEPT),
        )
