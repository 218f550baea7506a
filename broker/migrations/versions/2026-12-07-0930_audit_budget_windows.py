"""audit: refusal and query leaves within a budget per principal per minute

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 09:30:00

Refusals and auditors' queries beyond a principal's budget for a minute are counted instead
of logged one by one (`broker/audit/budget.py`): `audit_budget_windows` holds each principal's
number of budgeted events per minute (the upsert that admits or counts an event), and
`audit_budget_counts` the events beyond the budget by kind, code and subject, until the
summariser records them as one `audit.summarised` event and deletes both in one transaction.
Both tables hold only the minutes not yet summarised; each has an index on the window start,
which is what the summariser deletes by.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_budget_windows",
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("actor", "window_start", name=op.f("pk_audit_budget_windows")),
    )
    with op.batch_alter_table("audit_budget_windows", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_budget_windows_window_start", ["window_start"], unique=False
        )

    op.create_table(
        "audit_budget_counts",
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=120), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "actor",
            "window_start",
            "kind",
            "code",
            "subject",
            name=op.f("pk_audit_budget_counts"),
        ),
    )
    with op.batch_alter_table("audit_budget_counts", schema=None) as batch_op:
        batch_op.create_index("ix_audit_budget_counts_window_start", ["window_start"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_budget_counts", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_budget_counts_window_start")
    op.drop_table("audit_budget_counts")
    with op.batch_alter_table("audit_budget_windows", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_budget_windows_window_start")
    op.drop_table("audit_budget_windows")
