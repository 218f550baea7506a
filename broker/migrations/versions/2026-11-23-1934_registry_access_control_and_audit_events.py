"""registry, access control and audit events

Revision ID: 0001
Revises:
Create Date: 2026-11-23 19:34:52.068744
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "agencies",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind in ('customs', 'police', 'prosecution', 'wildlife', 'other')",
            name=op.f("ck_agencies_kind"),
        ),
        sa.CheckConstraint("status in ('active', 'suspended')", name=op.f("ck_agencies_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agencies")),
    )
    op.create_table(
        "agreements",
        sa.Column("id", sa.String(length=48), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreements")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("subject", sa.String(length=120), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leaf_index", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("leaf_index", name=op.f("uq_audit_events_leaf_index")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_kind_created", ["kind", "created_at"], unique=False)
        batch_op.create_index(
            "ix_audit_events_unsequenced",
            ["created_at"],
            unique=False,
            postgresql_where="leaf_index is null",
        )

    op.create_table(
        "agreement_versions",
        sa.Column("agreement_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "document",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("sha256", sa.String(length=43), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_agreement_versions_agreement_id_agreements"),
        ),
        sa.PrimaryKeyConstraint("agreement_id", "version", name=op.f("pk_agreement_versions")),
    )
    op.create_table(
        "focal_points",
        sa.Column("id", sa.String(length=48), nullable=False),
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status in ('active', 'suspended')", name=op.f("ck_focal_points_status")
        ),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_focal_points_agency_id_agencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_focal_points")),
    )
    with op.batch_alter_table("focal_points", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_focal_points_agency_id"), ["agency_id"], unique=False)

    op.create_table(
        "operations",
        sa.Column("id", sa.String(length=48), nullable=False),
        sa.Column("agreement_id", sa.String(length=48), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "document",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("sha256", sa.String(length=43), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("starts_at < ends_at", name=op.f("ck_operations_window")),
        sa.ForeignKeyConstraint(
            ["agreement_id"], ["agreements.id"], name=op.f("fk_operations_agreement_id_agreements")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_operations_agreement_id"), ["agreement_id"], unique=False
        )

    op.create_table(
        "designations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("focal_point_id", sa.String(length=48), nullable=False),
        sa.Column("agreement_id", sa.String(length=48), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "valid_until is null or valid_from <= valid_until",
            name=op.f("ck_designations_validity"),
        ),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_designations_agreement_id_agreements"),
        ),
        sa.ForeignKeyConstraint(
            ["focal_point_id"],
            ["focal_points.id"],
            name=op.f("fk_designations_focal_point_id_focal_points"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_designations")),
    )
    with op.batch_alter_table("designations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_designations_fp_agreement", ["focal_point_id", "agreement_id"], unique=False
        )

    op.create_table(
        "keys",
        sa.Column("kid", sa.String(length=43), nullable=False),
        sa.Column("agency_id", sa.String(length=16), nullable=False),
        sa.Column("focal_point_id", sa.String(length=48), nullable=True),
        sa.Column("use", sa.String(length=3), nullable=False),
        sa.Column(
            "jwk",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=16), nullable=True),
        sa.Column("compromised_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "revocation_reason is null or revocation_reason in ('superseded', 'key_compromise')",
            name=op.f("ck_keys_revocation_reason"),
        ),
        sa.CheckConstraint(
            "status in ('active', 'retired', 'revoked')", name=op.f("ck_keys_status")
        ),
        sa.CheckConstraint("use in ('sig', 'enc')", name=op.f("ck_keys_use")),
        sa.CheckConstraint("not_before < not_after", name=op.f("ck_keys_validity")),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_keys_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(
            ["focal_point_id"],
            ["focal_points.id"],
            name=op.f("fk_keys_focal_point_id_focal_points"),
        ),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_keys")),
    )
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keys_agency_id"), ["agency_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_keys_focal_point_id"), ["focal_point_id"], unique=False
        )

    op.create_table(
        "principals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("agency_id", sa.String(length=16), nullable=True),
        sa.Column("focal_point_id", sa.String(length=48), nullable=True),
        sa.Column(
            "audit_agencies",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "role in ('focal_point', 'agency', 'auditor', 'admin')", name=op.f("ck_principals_role")
        ),
        sa.CheckConstraint("status in ('active', 'disabled')", name=op.f("ck_principals_status")),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_principals_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(
            ["focal_point_id"],
            ["focal_points.id"],
            name=op.f("fk_principals_focal_point_id_focal_points"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
        sa.UniqueConstraint("name", name=op.f("uq_principals_name")),
    )
    op.create_table(
        "credentials",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("principal_id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name=op.f("fk_credentials_principal_id_principals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_credentials_token_hash")),
    )
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credentials_principal_id"), ["principal_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_principal_id"))

    op.drop_table("credentials")
    op.drop_table("principals")
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keys_focal_point_id"))
        batch_op.drop_index(batch_op.f("ix_keys_agency_id"))

    op.drop_table("keys")
    with op.batch_alter_table("designations", schema=None) as batch_op:
        batch_op.drop_index("ix_designations_fp_agreement")

    op.drop_table("designations")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operations_agreement_id"))

    op.drop_table("operations")
    with op.batch_alter_table("focal_points", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_focal_points_agency_id"))

    op.drop_table("focal_points")
    op.drop_table("agreement_versions")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_unsequenced", postgresql_where="leaf_index is null")
        batch_op.drop_index("ix_audit_events_kind_created")

    op.drop_table("audit_events")
    op.drop_table("agreements")
    op.drop_table("agencies")
