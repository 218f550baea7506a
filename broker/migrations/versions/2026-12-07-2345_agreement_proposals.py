"""agreement proposals: a new version takes effect once the parties approve it

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 23:45:00

`agreement_proposals` keeps each proposed version of an agreement (the full document, its JCS
hash, the version it changes, who proposed it and until when it may be approved);
`agreement_approvals` each party's signed approval (`agreement-approval+jws`), one per agency
and proposal. The partial index finds the open proposals the lifecycle sweep closes at expiry
(`broker/agreements/service.py`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "status = 'open'"


def upgrade() -> None:
    op.create_table(
        "agreement_proposals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("agreement_id", sa.String(length=48), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column(
            "document",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("policy_hash", sa.String(length=43), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("proposed_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "status in ('open', 'adopted', 'superseded', 'expired')",
            name=op.f("ck_agreement_proposals_status"),
        ),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_agreement_proposals_agreement_id_agreements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreement_proposals")),
    )
    with op.batch_alter_table("agreement_proposals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agreement_proposals_agreement_id", ["agreement_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_agreement_proposals_open_expiry",
            ["expires_at"],
            unique=False,
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )
    op.create_table(
        "agreement_approvals",
        sa.Column("proposal_id", sa.Uuid(), nullable=False),
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=43), nullable=False),
        sa.Column("kid", sa.String(length=43), nullable=False),
        sa.Column("approved_by", sa.String(length=64), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_agreement_approvals_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(
            ["proposal_id"],
            ["agreement_proposals.id"],
            name=op.f("fk_agreement_approvals_proposal_id_agreement_proposals"),
        ),
        sa.PrimaryKeyConstraint("proposal_id", "agency_id", name=op.f("pk_agreement_approvals")),
    )


def downgrade() -> None:
    op.drop_table("agreement_approvals")
    with op.batch_alter_table("agreement_proposals", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_agreement_proposals_open_expiry",
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )
        batch_op.drop_index("ix_agreement_proposals_agreement_id")
    op.drop_table("agreement_proposals")
