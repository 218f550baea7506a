"""Optional push delivery: an agency's HTTPS endpoint, and every attempt to POST to it."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base
from broker.ids import new_id, utcnow

ATTEMPT_STATUSES = ("sending", "delivered", "retry", "failed", "dead", "lost")


class PushEndpoint(Base):
    """Where the broker POSTs an agency's deliveries as they become available (polling stays)."""

    __tablename__ = "push_endpoints"

    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PushAttempt(Base):
    """One POST of one delivery: `sending` while in flight, then its outcome.

    `lost` marks an attempt whose worker died before recording the outcome (found when the
    lease ran out). The URL is not copied here: the endpoint row says where it went.
    """

    __tablename__ = "push_attempts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    outbox_id: Mapped[int] = mapped_column(BigInteger)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deliveries.id"))
    agency_id: Mapped[str] = mapped_column(ForeignKey("agencies.id"))
    attempt: Mapped[int]
    status: Mapped[str] = mapped_column(String(12), default="sending")
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "status in ('sending', 'delivered', 'retry', 'failed', 'dead', 'lost')", name="status"
        ),
        Index("ix_push_attempts_delivery_id", "delivery_id"),
        Index("ix_push_attempts_outbox_id", "outbox_id"),
    )
