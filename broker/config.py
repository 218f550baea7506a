"""Typed settings: one `Settings` object, `BROKER_` environment prefix."""

from __future__ import annotations

import ipaddress
import math
import os
from collections import Counter
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Self

from pydantic import BeforeValidator, Field, IPvAnyNetwork, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Placeholders are fine on a developer's machine and refused anywhere else.
DEV_PEPPER = "dev-only-token-pepper-change-me"
DEV_KEY_PASSPHRASE = "dev-only-key-passphrase-change-me"  # noqa: S105


# What a secret must carry at least, by `estimated_bits`: the pepper keys every token's HMAC,
# the passphrase wraps the broker's signing keys (a person may have to type it).
PEPPER_MIN_BITS = 100
PASSPHRASE_MIN_BITS = 80


def estimated_bits(secret: str) -> float:
    """An upper estimate of `secret`'s entropy: its length times the Shannon entropy of its
    characters' frequencies.

    It sees only how varied the characters are, not patterns or words: it refuses a repeated
    character or a tiny alphabet (`"a" * 32` scores 0, `"changeme" * 4` 88), not a long
    sentence. `secrets.token_urlsafe(32)` scores about 200, `token_hex(16)` about 110.
    """
    counts = Counter(secret)
    n = len(secret)
    return -n * sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def proxy_list(text: str) -> list[str]:
    """Comma-separated proxy addresses or CIDRs (`BROKER_TRUSTED_PROXIES`,
    `broker serve --forwarded-allow-ips`); ValueError names the first that is neither."""
    proxies = [p.strip() for p in text.split(",") if p.strip()]
    for proxy in proxies:
        ipaddress.ip_network(proxy, strict=False)  # a typo fails at start, not silently
    return proxies


class Profile(StrEnum):
    """Embedded: SQLite and in-process work. Production: PostgreSQL, Redis, Celery."""

    embedded = "embedded"
    production = "production"


class Environment(StrEnum):
    development = "development"
    production = "production"


class Settings(BaseSettings):
    """Everything the broker reads from its environment."""

    # Compose/Kubernetes secrets: files named broker_<field> in BROKER_SECRETS_DIR.
    model_config = SettingsConfigDict(
        env_prefix="BROKER_",
        env_file=None,
        extra="ignore",
        secrets_dir=os.environ.get("BROKER_SECRETS_DIR") or None,
    )

    profile: Profile = Profile.embedded
    environment: Environment = Environment.development
    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in data_dir"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    keys_dir: Path | None = Field(
        default=None, description="Broker's own receipt and log keys; default: data_dir/keys"
    )
    key_passphrase: str = DEV_KEY_PASSPHRASE
    token_pepper: str = DEV_PEPPER
    token_ttl_days: int = 90
    # How long a proposed agreement change waits for the parties' approvals before it lapses.
    agreement_proposal_ttl_days: int = Field(default=30, ge=1)
    log_origin: str = "broker.example.int/exchange-log/v1"
    public_base_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    # Kept open: as many as SessionDep admits at once (deps.py), so that a busy process does
    # not open and close an overflow connection per request (docs/performance.md).
    db_pool_size: int = 20
    db_max_overflow: int = 0
    max_envelope_bytes: int = 600 * 1024
    max_request_bytes: int = 1024 * 1024
    request_read_timeout_s: float = Field(
        default=30.0, gt=0, description="a request body must arrive within this (else 408)"
    )
    gc_freeze: bool = Field(
        default=True,
        description="freeze the start-up heap out of the cyclic GC (broker/runtime.py)",
    )
    # Rate limits (moving window, per minute) and long-poll caps: broker/ratelimit.py.
    rate_limit_enabled: bool = True
    rate_limit_storage: str | None = Field(
        default=None, description="`limits` storage URI; default memory:// (embedded) or redis_url"
    )
    rate_default_per_minute: int = Field(default=1200, ge=1, description="per principal")
    rate_submit_per_minute: int = Field(default=600, ge=1, description="submissions per principal")
    rate_auth_failures_per_minute: int = Field(
        default=600, ge=1, description="failed authentications per client address"
    )
    # Whose X-Forwarded-For / X-Forwarded-Proto to believe (issue 15.8): nobody unless listed,
    # where uvicorn alone would believe 127.0.0.1.
    trusted_proxies: str = Field(
        default="",
        description="comma-separated proxy addresses or CIDRs; empty: none "
        "(`broker serve --forwarded-allow-ips` overrides it)",
    )
    longpoll_per_agency: int = Field(default=4, ge=1, description="concurrent waiting polls")
    # A waiting poll holds neither a thread nor a connection (inbox.service.long_poll): the cap
    # bounds memory and wake-up fan-out, and must fit every agency polling at once.
    longpoll_total: int = Field(
        default=64, ge=1, description="concurrent waiting polls per process"
    )
    # Push delivery (optional per agency; polling stays the source of truth): broker/push.
    push_max_attempts: int = Field(default=8, ge=1, description="then the push is dead-lettered")
    push_backoff_base_s: float = Field(default=5.0, gt=0, description="first retry delay")
    push_backoff_max_s: float = Field(default=3600.0, gt=0, description="longest retry delay")
    push_timeout_s: float = Field(default=10.0, gt=0, le=60, description="per POST")
    # Push destinations (issue 15, SSRF): internal networks a push may reach all the same
    # (broker/push/destinations.py); comma-separated CIDRs in the environment.
    push_allowed_networks: Annotated[
        list[IPvAnyNetwork],
        NoDecode,
        BeforeValidator(
            lambda v: [n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else v
        ),
    ] = Field(default_factory=list, description="CIDRs admitted although not public")
    # Audit leaf budget (issue 15, 8c): refusals and auditors' queries per principal per
    # minute that get a leaf each; the rest are counted into one summary leaf (broker/audit/budget).
    audit_budget_per_minute: int = Field(
        default=30, ge=1, description="budgeted events per principal per minute logged one by one"
    )
    # Auditor's console (issue 15, 2 and 8d): server-side sessions and background full
    # verification runs (broker/console).
    console_session_idle_s: int = Field(
        default=1800, ge=60, description="a console session unused this long ends"
    )
    console_session_max_s: int = Field(
        default=8 * 3600, ge=300, description="a console session ends this long after sign-in"
    )
    console_verify_timeout_s: int = Field(
        default=180,
        ge=10,
        le=220,
        description="a full verification run stops after this (under the 240 s task limit)",
    )
    console_verify_interval_s: int = Field(
        default=300, ge=0, description="least time from a full verification to the next"
    )
    # Inbox page byte budget (issue 15, 8b): a page stops adding envelopes at this many bytes
    # (its first item always comes); broker/inbox/repository.py `page`.
    inbox_page_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="envelope bytes per inbox page at most"
    )

    @model_validator(mode="after")
    def _page_budget_holds_an_envelope(self) -> Self:
        if self.inbox_page_max_bytes < self.max_envelope_bytes:
            raise ValueError(
                "BROKER_INBOX_PAGE_MAX_BYTES must be at least BROKER_MAX_ENVELOPE_BYTES "
                f"({self.max_envelope_bytes}): every accepted envelope must fit in a page"
            )
        return self

    # Who may read /metrics and the API's description (issue 15.7): broker/health/service.py.
    metrics_token: str | None = Field(
        default=None, min_length=32, description="the metrics scraper's bearer token"
    )
    metrics_public: bool = Field(
        default=False, description="/metrics without a credential (internal listener only)"
    )
    api_docs: bool = Field(default=True, description="serve /openapi.json and /docs")
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def uvicorn_proxy(self) -> dict[str, object]:
        """uvicorn's options for forwarded headers: only from `trusted_proxies`."""
        proxies = proxy_list(self.trusted_proxies)
        if not proxies:
            return {"proxy_headers": False}
        return {"proxy_headers": True, "forwarded_allow_ips": ",".join(proxies)}

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def broker_keys_dir(self) -> Path:
        """Where the broker keeps its own (encrypted) receipt and log keys."""
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "keys"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Self:
        # The production profile is production whatever BROKER_ENVIRONMENT says (issue 15.5):
        # its secrets guard every token and the broker's own signing keys.
        if self.environment is not Environment.development or self.profile is Profile.production:
            placeholders = {DEV_PEPPER, DEV_KEY_PASSPHRASE}
            if self.token_pepper in placeholders or self.key_passphrase in placeholders:
                raise ValueError(
                    "placeholder secrets are refused outside development: "
                    "set BROKER_TOKEN_PEPPER and BROKER_KEY_PASSPHRASE"
                )
            for name, value, chars, bits in (
                ("BROKER_TOKEN_PEPPER", self.token_pepper, 32, PEPPER_MIN_BITS),
                ("BROKER_KEY_PASSPHRASE", self.key_passphrase, 22, PASSPHRASE_MIN_BITS),
            ):
                if len(value) < chars or estimated_bits(value) < bits:
                    raise ValueError(
                        f"{name} is too weak: at least {chars} characters and about {bits} "
                        "bits of entropy (e.g. python -c 'import secrets; "
                        "print(secrets.token_urlsafe(32))')"
                    )
        if self.profile is Profile.production and self.is_sqlite:
            raise ValueError("the production profile needs PostgreSQL (BROKER_DATABASE_URL)")
        try:
            self.uvicorn_proxy  # noqa: B018 - parsed here, so that a typo stops the start
        except ValueError as exc:
            raise ValueError(f"BROKER_TRUSTED_PROXIES: {exc}") from None
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests and the CLI may call `configure` to replace them)."""
    return Settings()


def configure(**overrides: object) -> Settings:
    """Replace the process-wide settings (CLI flags, tests)."""
    get_settings.cache_clear()
    settings = Settings(**overrides)  # type: ignore[arg-type]
    _override.clear()
    _override.append(settings)
    return settings


_override: list[Settings] = []


def settings() -> Settings:
    """Current settings: the configured override, else the environment."""
    return _override[0] if _override else get_settings()
