"""participants beyond states; urgent deliveries served first

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 20:00:00

International and regional bodies (INT- ids) have no country, so `agencies.country` becomes
nullable, and agency kinds gain those bodies and border liaison offices. Focal points gain the locality they serve (a border crossing, a port, a province)
and its ISO 3166-2 code. `deliveries.urgent` copies the message's `priority == urgent` onto
each delivery, so an inbox page finds the urgent copies not yet fetched through a small
partial index instead of scanning the backlog (`broker/inbox/repository.py`, `page`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WAITING = "urgent and state = 'available'"
_STATES = "'customs', 'police', 'prosecution', 'wildlife', 'other'"
_KINDS = f"{_STATES}, 'international_body', 'regional_liaison_office', 'border_liaison_office'"


def _restamp_agencies() -> None:
    """SQLite: the batch migration copied `agencies` to a new table, without the registry
    stamp's triggers (revision 0004); create them again."""
    if op.get_bind().dialect.name != "sqlite":
        return
    body = "UPDATE registry_state SET stamp = lower(hex(randomblob(16))) WHERE id = 1"
    for action in ("insert", "update", "delete"):
        head = f"CREATE TRIGGER registry_restamp_agencies_{action}"
        op.execute(f"{head} AFTER {action.upper()} ON agencies BEGIN {body}; END")


def upgrade() -> None:
    with op.batch_alter_table("agencies", schema=None) as batch_op:
        batch_op.alter_column("country", existing_type=sa.String(length=2), nullable=True)
        batch_op.alter_column(
            "kind", existing_type=sa.String(length=20), type_=sa.String(length=32)
        )
        batch_op.drop_constraint(op.f("ck_agencies_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_agencies_kind"), f"kind in ({_KINDS})")
    _restamp_agencies()
    with op.batch_alter_table("focal_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locality", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("subdivision", sa.String(length=6), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    messages = sa.table("messages", sa.column("id", sa.Uuid()), sa.column("routing", sa.JSON()))
    deliveries = sa.table(
        "deliveries", sa.column("message_id", sa.Uuid()), sa.column("urgent", sa.Boolean())
    )
    urgent = sa.select(messages.c.id).where(messages.c.routing["priority"].as_string() == "urgent")
    op.execute(deliveries.update().where(deliveries.c.message_id.in_(urgent)).values(urgent=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_urgent_waiting",
            ["recipient", "inbox_seq"],
            unique=False,
            postgresql_where=sa.text(_WAITING),
            sqlite_where=sa.text(_WAITING),
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_deliveries_urgent_waiting",
            postgresql_where=sa.text(_WAITING),
            sqlite_where=sa.text(_WAITING),
        )
        batch_op.drop_column("urgent")
    with op.batch_alter_table("focal_points", schema=None) as batch_op:
        batch_op.drop_column("subdivision")
        batch_op.drop_column("locality")
    with op.batch_alter_table("agencies", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_agencies_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_agencies_kind"), f"kind in ({_STATES})")
        batch_op.alter_column(
            "kind", existing_type=sa.String(length=32), type_=sa.String(length=20)
        )
        batch_op.alter_column("country", existing_type=sa.String(length=2), nullable=False)
    _restamp_agencies()
