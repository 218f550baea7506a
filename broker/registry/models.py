"""The registry's stamp: one row, changed by database triggers with every registry write."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base

# Every write to these tables changes the stamp in the same transaction (migration 0004).
REGISTRY_TABLES = (
    "agencies",
    "focal_points",
    "keys",
    "agreements",
    "agreement_versions",
    "operations",
    "designations",
)


class RegistryState(Base):
    """A random token, new with every statement that writes a registry table.

    Triggers set it, so no code path (nor an operator's SQL) can change the registry without
    changing the stamp. It is random rather than a counter: a rolled-back transaction's value
    is never reused, so a snapshot labelled with it can never be mistaken for committed data.
    Deleting the row is ignored by a trigger (test fixtures empty every table).
    """

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    stamp: Mapped[str] = mapped_column(String(32))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)
