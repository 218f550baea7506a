"""Log fixtures: a client without the background ticker, so each test decides when to sequence."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

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

    with db.session_scope() as s:
        for i in range(n):
            service.record(s, "test.event", actor="test", subject=None, details={"n": i, **details})


@pytest.fixture
def api(app: Any, clean_db: str) -> Iterator[Any]:
    """A TestClient without the lifespan: no ticker runs, the test sequences when it wants."""
    from fastapi.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)
    yield client
    client.close()


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
