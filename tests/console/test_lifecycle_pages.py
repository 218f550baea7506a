"""The auditor's console shows a message's recall, its recipients' answers, and its purge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker import db, jobs, ticker
from broker.lifecycle import jobs as lifecycle_jobs
from broker.lifecycle import service as lifecycle
from tests.audit.conftest import sequence_all
from tests.console.conftest import text_of
from tests.lifecycle.test_retention import age
from tests.messages.conftest import Exchange, relay
from tests.recalls.test_recall import (
    MEKONG,
    answer,
    compliance_jws,
    inbox_of,
    post_recall,
    recall_jws,
)


@pytest.fixture(autouse=True)
def _no_ticker_purge(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test purges when it says so, not when the embedded ticker would.
    monkeypatch.setattr(lifecycle_jobs, "install", lambda: None)
    monkeypatch.delitem(ticker._jobs, jobs.PURGE, raising=False)


def test_a_recall_and_its_answers(exchange: Exchange, auditor: str) -> None:
    response, routing, _ = exchange.send(**MEKONG)
    assert response.status_code == 201
    mid = str(routing["mid"])
    relay()
    inbox_of(exchange, "HK-CED")  # HK-CED holds a copy; the others are withdrawn unread
    jws, rid = recall_jws(
        exchange, mid, reason="erasure_request", legal_reference="HCMC-PC-2026/0917"
    )
    assert post_recall(exchange, mid, jws).status_code == 201
    relay()
    assert answer(exchange, "HK-CED", mid, compliance_jws(exchange, "HK-CED", mid, rid)).is_success
    sequence_all()
    page = exchange.client.get(f"/console/messages/{mid}")
    assert page.status_code == 200, page.text
    text = text_of(page.text)
    for fact in ("Recall", "erasure_request", "HCMC-PC-2026/0917", "withdrawn unread", "erased"):
        assert fact in text, fact
    assert "recalled by the sender" in text
    assert "HK-CED answered the recall" in text
    assert f'href="/console/messages/{rid}"' in page.text  # the notice, a message of its own


def test_a_purge(exchange: Exchange, auditor: str) -> None:
    response, routing, _ = exchange.send()  # VN-HK-CMAA-2013 keeps messages five years
    assert response.status_code == 201
    mid = str(routing["mid"])
    relay()
    age(mid, datetime.now(UTC) - timedelta(days=6 * 366))
    assert db.call(lifecycle.purge) >= 1
    sequence_all()
    text = text_of(exchange.client.get(f"/console/messages/{mid}").text)
    assert "Purged under retention" in text
    assert "VN-HK-CMAA-2013's retention" in text
