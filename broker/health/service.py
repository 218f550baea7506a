"""Readiness checks, and who may read the metrics."""

from __future__ import annotations

import hmac

from sqlalchemy import text

from broker import db, migrations_check
from broker.config import Profile, settings
from broker.errors import Unauthenticated


def admit_scraper(authorization: str | None) -> None:
    """Let the metrics scraper in (its bearer token), or anyone when metrics are public."""
    cfg = settings()
    if cfg.metrics_public:
        return
    expected = f"Bearer {cfg.metrics_token}" if cfg.metrics_token else None
    offered = authorization or ""
    if expected is None or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise Unauthenticated(
            "metrics need the scraper's token (BROKER_METRICS_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


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
