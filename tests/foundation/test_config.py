"""Settings: zero configuration for the embedded default, refusals outside development."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.config import Settings


def test_embedded_default_needs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BROKER_DATABASE_URL", "BROKER_PROFILE", "BROKER_ENVIRONMENT"):
        monkeypatch.delenv(var, raising=False)
    cfg = Settings()
    assert cfg.sqlalchemy_url.startswith("sqlite:///")
    assert cfg.sqlalchemy_url.endswith("data/broker.db")
    assert cfg.broker_keys_dir.as_posix().endswith("data/keys")


def test_placeholder_secrets_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="placeholder secrets"):
        Settings(environment="production", database_url="postgresql+psycopg://x@h/db")


def test_production_profile_refuses_sqlite() -> None:
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(profile="production", environment="development")


def test_production_with_real_secrets() -> None:
    cfg = Settings(
        environment="production",
        profile="production",
        database_url="postgresql+psycopg://x@h/db",
        token_pepper="p" * 40,
        key_passphrase="ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    )
    assert cfg.profile == "production"


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PORT", "9100")
    assert Settings().port == 9100
