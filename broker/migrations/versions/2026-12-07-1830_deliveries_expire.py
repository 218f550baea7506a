"""deliveries: a copy not fetched before the message's exp is withdrawn (`expired`)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:30:00

A delivery not fetched by its message's `exp` leaves the recipient's inbox for good: state
`expired`, with the time in `expired_at` (`broker/inbox/service.py::expire`). The state's check
constraint gains the value; SQLite rebuilds the table for it (batch mode).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "state in ('queued', 'available', 'fetched', 'acknowledged')"
AFTER = "state in ('queued', 'available', 'fetched', 'acknowledged', 'expired')"


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(op.f("ck_deliveries_state"), type_="check")
        batch_op.create_check_constraint(op.f("ck_deliveries_state"), sa.text(AFTER))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_deliveries_state"), type_="check")
        batch_op.execute(
            sa.text("update deliveries set state = 'available' where state = 'expired'")
        )
        batch_op.create_check_constraint(op.f("ck_deliveries_state"), sa.text(BEFORE))
        batch_op.drop_column("expired_at")
