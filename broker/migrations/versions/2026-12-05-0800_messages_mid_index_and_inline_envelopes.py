"""messages: an index on mid for feedback, and envelopes kept in the table row

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 08:00:00

Feedback names the alert it answers by `mid` alone, and the look-up of that alert (which
agency received it, from whom, under which agreement) could only scan the `(sender, mid)`
index: a cost that grew with the table. It gets an index on `mid`, in place of the index on
`in_reply_to`, which no query used (so an accepted message still costs the same number of
index entries).

PostgreSQL: `toast_tuple_target = 8160` on `messages`, so that a row holding an envelope of
up to about 7 KB stays in the table, uncompressed. Under the default (2 KB) every 4 KB
envelope was first compressed, which fails for ciphertext, then written to the TOAST table
and its index: measured on a table of 4 KB envelopes, 15-30 % more of PostgreSQL's CPU per
insert and 40 % more disk. The setting applies to rows written from now on; existing rows stay
as they are until rewritten.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_in_reply_to")
        batch_op.create_index("ix_messages_mid", ["mid"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE messages RESET (toast_tuple_target)")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_mid")
        batch_op.create_index("ix_messages_in_reply_to", ["in_reply_to"], unique=False)
