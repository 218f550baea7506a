"""agency registrars: a principal role bound to one agency that administers its own people

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:30:00

A `registrar` principal registers, suspends and rotates its own agency's focal points,
designations, keys and principals, and approves agreement changes for its agency; the
operator's `admin` keeps agencies, agreements and operations (`docs/registrars.md`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLES = "'focal_point', 'agency', 'auditor', 'admin'"


def upgrade() -> None:
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_principals_role"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_principals_role"), sa.text(f"role in ({_ROLES}, 'registrar')")
        )


def downgrade() -> None:
    op.execute(
        "DELETE FROM console_sessions WHERE credential_id IN (SELECT c.id FROM credentials c"
        " JOIN principals p ON p.id = c.principal_id WHERE p.role = 'registrar')"
    )
    op.execute(
        "DELETE FROM credentials WHERE principal_id IN"
        " (SELECT id FROM principals WHERE role = 'registrar')"
    )
    op.execute("DELETE FROM principals WHERE role = 'registrar'")
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_principals_role"), type_="check")
        batch_op.create_check_constraint(op.f("ck_principals_role"), sa.text(f"role in ({_ROLES})"))
