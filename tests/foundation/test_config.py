"""Settings: zero configuration for the embedded default, refusals outside development."""

from __future__ import annotations

import secrets

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


STRONG = {
    "token_pepper": "Jq7vX2mP9rT4wY8zB3nK6cF1hL5sD0gA",
    "key_passphrase": "v8-Rq2#mZt4!Wk9pLx6&Bn3",
}


def test_production_profile_refuses_sqlite() -> None:
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(profile="production", environment="development", **STRONG)


def test_production_profile_refuses_placeholders_whatever_the_environment() -> None:
    """Issue 15.5: BROKER_ENVIRONMENT=development let the production profile run on them."""
    with pytest.raises(ValidationError, match="placeholder secrets"):
        Settings(
            profile="production",
            environment="development",
            database_url="postgresql+psycopg://x@h/db",
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("token_pepper", "a" * 32),
        ("token_pepper", "changeme" * 4),
        ("key_passphrase", "b" * 30),
        ("key_passphrase", "abcabcabcabcabcabcabcabc"),
    ],
)
def test_low_entropy_secrets_refused(field: str, value: str) -> None:
    """Issue 15.5: a pepper of "a" * 32 passed the length check."""
    with pytest.raises(ValidationError, match="too weak"):
        Settings(
            profile="production",
            database_url="postgresql+psycopg://x@h/db",
            **{**STRONG, field: value},
        )


def test_generated_secrets_pass() -> None:
    cfg = Settings(
        profile="production",
        database_url="postgresql+psycopg://x@h/db",
        token_pepper=secrets.token_urlsafe(32),
        key_passphrase=secrets.token_urlsafe(18),
    )
    assert cfg.profile == "production"


def test_production_with_real_secrets() -> None:
    cfg = Settings(
        environment="production",
        profile="production",
        database_url="postgresql+psycopg://x@h/db",
        **STRONG,
    )
    assert cfg.profile == "production"


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PORT", "9100")
    assert Settings().port == 9100
