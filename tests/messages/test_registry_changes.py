"""Registry changes take effect on the next submit, whatever the submit path keeps in memory."""

from __future__ import annotations

from typing import Any

from broker import db
from broker.agreements import service as agreements
from broker.directory import service as directory
from broker.directory.schemas import RevokeIn
from tests.messages.conftest import Exchange


def test_a_revoked_signing_key_fails_the_next_submit(exchange: Exchange) -> None:
    first, _, _ = exchange.send()
    assert first.status_code == 201, first.text
    db.call(
        directory.revoke,
        exchange.signing["VN-GDC/fp-hcm-01"].kid,
        RevokeIn(reason="superseded"),
        actor="t",
    )
    second, _, _ = exchange.send()
    assert second.status_code == 422
    assert second.json()["code"] == "key.revoked"


def test_a_revoked_recipient_key_fails_the_next_submit(exchange: Exchange) -> None:
    assert exchange.send()[0].status_code == 201
    db.call(
        directory.revoke,
        exchange.encryption["HK-CED"].kid,
        RevokeIn(reason="superseded"),
        actor="t",
    )
    refused = exchange.send()[0]
    assert refused.status_code == 422
    assert refused.json()["code"] == "key.recipient_no_key"


def test_a_suspended_agreement_fails_the_next_submit(
    exchange: Exchange, world: dict[str, Any]
) -> None:
    assert exchange.send()[0].status_code == 201
    doc = next(a for a in world["agreements"] if a["id"] == "VN-HK-CMAA-2013")
    db.call(
        agreements.update_agreement, doc["id"], {**doc, "status": "suspended"}, actor="admin:test"
    )
    refused = exchange.send()[0]
    assert refused.status_code == 403
    assert refused.json()["code"] == "scope.agreement_suspended"
    db.call(agreements.update_agreement, doc["id"], doc, actor="admin:test")
    assert exchange.send()[0].status_code == 201
