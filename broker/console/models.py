"""The console's own state: server-side sessions, and the full verification runs it started."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db import Base, JSONDoc
from broker.ids import new_id, utcnow

RUN_STATUSES = ("queued", "running", "ok", "failed", "error")


class ConsoleSession(Base):
    """A signed-in browser: bound to the principal and to the API token it was opened with.

    The browser holds a random session id; only its SHA-256 is stored. The idle and absolute
    limits are computed from `last_seen_at` and `created_at` with the current settings, so an
    operator who shortens them shortens every open session too.
    """

    __tablename__ = "console_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    principal_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("principals.id"), index=True)
    credential_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("credentials.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class VerificationRun(Base):
    """One full verification of the log at a fixed checkpoint, run in the background.

    `queued` -> `running` -> `ok` (the log verifies), `failed` (it does not: `code`, `message`)
    or `error` (no verdict: timed out, or its worker died twice). `active` is true while queued
    or running and null afterwards: its unique constraint admits one active run in all.
    `attempts` fences a run's result: a worker writes it only if no one took the run over.
    """

    __tablename__ = "console_verification_runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    status: Mapped[str] = mapped_column(String(12), default="queued")
    active: Mapped[bool | None] = mapped_column(unique=True, default=True)
    requested_by: Mapped[str] = mapped_column(String(120))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    code: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    # The verifier's report, one line per check (what the page shows).
    report: Mapped[list[Any]] = mapped_column(JSONDoc, default=list)

    __table_args__ = (
        CheckConstraint("status in ('queued', 'running', 'ok', 'failed', 'error')", name="status"),
    )
