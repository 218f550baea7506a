"""Log fixtures: an app whose ticker stays idle, so each test decides when to sequence."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Executable

from broker import db
from tests.conftest import bearer


def sequence_all() -> int:
    """Sequence everything recorded so far (what the ticker or Celery would do within a second)."""
    from broker.audit import jobs

    total = 0
    while done := jobs.sequence_pending():
        total += done
    return total


def record(n: int, **details: Any) -> None:
    """Record `n` events in one transaction."""
    from broker.audit import service

    events = [
        service.event("test.event", actor="test", details={"n": i, **details}) for i in range(n)
    ]
    db.call(service.record_many, events)


def rows(stmt: Executable) -> list[Any]:
    """Every row of a SELECT, read in a transaction of its own."""
    return list(db.call(lambda s: s.execute(stmt)).all())


def scalars(stmt: Executable) -> list[Any]:
    """Every first column of a SELECT, read in a transaction of its own."""
    return list(db.call(lambda s: s.scalars(stmt)).all())


def scalar(stmt: Executable) -> Any:
    """The one value of a SELECT, read in a transaction of its own."""
    return db.call(lambda s: s.scalar(stmt))


def execute(stmt: Executable) -> None:
    """Run a statement (tampering behind the service's back) and commit."""
    db.call(lambda s: s.execute(stmt))


@pytest.fixture
def api(app: Any, clean_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A TestClient with the app's lifespan whose embedded ticker does nothing.

    The lifespan still starts (and its shutdown disposes this client's engine), but no job
    sequences behind a test's back: the test sequences when it wants (`sequence_all`).
    """
    from fastapi.testclient import TestClient

    from broker import ticker

    monkeypatch.setattr(ticker.Ticker, "run", lambda self: None)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def log_key(clean_db: str) -> str:
    """The broker's log verifier key, as a partner pins it."""
    from broker import keyring

    return keyring.load_or_create().log_verifier_key


@pytest.fixture
def oversight(token_for: Any) -> dict[str, str]:
    """Headers of an auditor who oversees every agency."""
    return bearer(token_for("auditor"))


def leaves_of(api: Any, headers: dict[str, str], start: int = 0) -> list[dict[str, Any]]:
    """Every leaf the caller may read, following `next`."""
    out: list[dict[str, Any]] = []
    cursor: int | None = start
    while cursor is not None:
        page = api.get("/v1/log/leaves", params={"start": cursor}, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        out += body["leaves"]
        cursor = body["next"]
    return out


def decode(item: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of a served leaf."""
    doc: dict[str, Any] = json.loads(base64.b64decode(item["leaf"]))
    return doc
