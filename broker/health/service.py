"""Readiness checks."""

from __future__ import annotations

from sqlalchemy import text

from broker import db, migrations_check
from broker.config import Profile, settings


async def readiness() -> dict[str, str]:
    """Each dependency's state: 'ok' or a short reason (never a secret or a URL)."""
    checks: dict[str, str] = {}
    try:
        async with db.engine().connect() as conn:
            await conn.execute(text("select 1"))
        checks["database"] = "ok" if await migrations_check.is_current() else "not migrated"
    except Exception as exc:
        checks["database"] = type(exc).__name__
    if settings().profile is Profile.production:
        try:
            from redis.asyncio import Redis

            client = Redis.from_url(settings().redis_url, socket_timeout=1)
            try:
                await client.ping()  # type: ignore[misc]  # redis-py types sync and async alike
            finally:
                await client.aclose()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = type(exc).__name__
    return checks
