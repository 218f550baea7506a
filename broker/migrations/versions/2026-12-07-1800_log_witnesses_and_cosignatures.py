"""transparency log: witnesses and their cosignatures of checkpoints

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 18:00:00

Partner agencies run witnesses that cosign the log's checkpoints (C2SP tlog-cosignature,
`broker/audit/witness.py`). `log_witnesses` holds each registered witness's key name (the name
in its signature lines), its cosigner verifier key and the agency that operates it;
`checkpoint_cosignatures` one line per checkpoint and witness (a newer timestamp replaces the
older), with an index by witness for "the latest checkpoint this witness cosigned".
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "log_witnesses",
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("vkey", sa.String(length=200), nullable=False),
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status in ('active', 'retired')", name=op.f("ck_log_witnesses_status")),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_log_witnesses_agency_id_agencies")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_log_witnesses")),
        sa.UniqueConstraint("vkey", name=op.f("uq_log_witnesses_vkey")),
    )
    with op.batch_alter_table("log_witnesses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_log_witnesses_agency_id"), ["agency_id"], unique=False)

    op.create_table(
        "checkpoint_cosignatures",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.String(length=120), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["size"],
            ["checkpoints.size"],
            name=op.f("fk_checkpoint_cosignatures_size_checkpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["witness"],
            ["log_witnesses.name"],
            name=op.f("fk_checkpoint_cosignatures_witness_log_witnesses"),
        ),
        sa.PrimaryKeyConstraint("size", "witness", name=op.f("pk_checkpoint_cosignatures")),
    )
    with op.batch_alter_table("checkpoint_cosignatures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_checkpoint_cosignatures_witness", ["witness", "size"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoint_cosignatures", schema=None) as batch_op:
        batch_op.drop_index("ix_checkpoint_cosignatures_witness")
    op.drop_table("checkpoint_cosignatures")
    with op.batch_alter_table("log_witnesses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_log_witnesses_agency_id"))
    op.drop_table("log_witnesses")
