"""console: server-side sessions and background verification runs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00

The auditor's console keeps its sessions in the database (`console_sessions`: the SHA-256 of a
random session id, bound to the principal and to the API token it was opened with) instead of
the token itself in the browser's cookie, and runs full log verifications in the background
(`console_verification_runs`: one active at a time, held by the unique `active` column, and
each outcome kept). Sessions are not migrated: cookies holding a token stop working, and
auditors sign in again. No registry table is touched.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("principal_id", sa.Uuid(), nullable=False),
        sa.Column("credential_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name=op.f("fk_console_sessions_credential_id_credentials"),
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_console_sessions_principal_id_principals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_console_sessions_session_hash")),
    )
    op.create_index("ix_console_sessions_created_at", "console_sessions", ["created_at"])
    op.create_index("ix_console_sessions_credential_id", "console_sessions", ["credential_id"])
    op.create_index("ix_console_sessions_principal_id", "console_sessions", ["principal_id"])
    op.create_table(
        "console_verification_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("requested_by", sa.String(length=120), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "report",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status in ('queued', 'running', 'ok', 'failed', 'error')",
            name=op.f("ck_console_verification_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_verification_runs")),
        sa.UniqueConstraint("active", name=op.f("uq_console_verification_runs_active")),
    )
    op.create_index(
        "ix_console_verification_runs_requested_at", "console_verification_runs", ["requested_at"]
    )


def downgrade() -> None:
    op.drop_index(
        "ix_console_verification_runs_requested_at", table_name="console_verification_runs"
    )
    op.drop_table("console_verification_runs")
    op.drop_index("ix_console_sessions_principal_id", table_name="console_sessions")
    op.drop_index("ix_console_sessions_credential_id", table_name="console_sessions")
    op.drop_index("ix_console_sessions_created_at", table_name="console_sessions")
    op.drop_table("console_sessions")
