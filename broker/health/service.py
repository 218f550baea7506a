"""Readiness checks."""

from __future__ import annotations

from sqlalchemy import text

from broker import db, migrations_check
from broker.config import Profile, settings


def readiness() -> dict[str, str]:
    """Each dependency's state: 'ok' or a short reason (never a secret or a URL)."""
    checks: dict[str, str] = {}
    try:
        with db.engine().connect() as conn:
            conn.execute(text("select 1"))
        checks["database"] = "ok" if migrations_check.is_current() else "not migrated"
    except Exception as exc:
        checks["database"] = type(exc).__name__
    if settings().profile is Profile.production:
        try:
            import redis

            redis.Redis.from_url(settings().redis_url, socket_timeout=1).ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = type(exc).__name__
    return checks
