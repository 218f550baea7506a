"""Readiness in the production profile checks Redis too (a real Redis, not a fake)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker import config, db
from broker.health import service

pytestmark = pytest.mark.postgres


@pytest.fixture
def production(backend: str, redis_url: str) -> Iterator[None]:
    assert backend == "postgresql"
    saved = config.settings()
    config.configure(**{**saved.model_dump(), "profile": "production", "redis_url": redis_url})
    db.reset_engine()
    yield
    config.configure(**saved.model_dump())
    db.reset_engine()


def test_ready_with_redis(production: None) -> None:
    assert db.run(service.readiness) == {"database": "ok", "redis": "ok"}


def test_not_ready_without_redis(production: None) -> None:
    saved = config.settings()
    config.configure(**{**saved.model_dump(), "redis_url": "redis://127.0.0.1:1/0"})
    checks = db.run(service.readiness)
    assert checks["database"] == "ok"
    assert checks["redis"] != "ok"
