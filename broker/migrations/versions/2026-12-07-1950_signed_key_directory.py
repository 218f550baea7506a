"""directory_versions: the broker-signed key directories, as published

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 19:50:00

Each row is one version of `GET /v1/directory` (PROTOCOL.md 6.2): the compact JWS served byte
for byte, its SHA-256 (also on the log as `directory.published`) and the hash of the key set it
holds, which is what decides whether the next request publishes a new version. `version` is the
primary key, so two API workers publishing at once cannot both take a number
(`broker/directory/repository.py`, `insert_version`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "directory_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sha256", sa.String(length=43), nullable=False),
        sa.Column("keys_sha256", sa.String(length=43), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("version > 0", name=op.f("ck_directory_versions_version")),
        sa.CheckConstraint("issued_at < expires_at", name=op.f("ck_directory_versions_lifetime")),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_directory_versions")),
        sa.UniqueConstraint("sha256", name=op.f("uq_directory_versions_sha256")),
    )


def downgrade() -> None:
    op.drop_table("directory_versions")
