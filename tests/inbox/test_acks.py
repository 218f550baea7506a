"""Acknowledgements: verified against the agency's keys, recorded once per change, audited."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from broker import db
from broker.audit.models import AuditEvent
from broker.crypto import envelope as env
from broker.crypto.keys import SigningKey, sha256_b64u
from tests.inbox.conftest import focal_point
from tests.messages.conftest import Exchange, relay


def acked_events() -> list[tuple[str, str | None]]:
    details = db.call(
        lambda s: s.scalars(
            select(AuditEvent.details)
            .where(AuditEvent.kind == "msg.acked")
            .order_by(AuditEvent.created_at)
        )
    )
    return [(d["status"], d["reason"]) for d in details]


def signed_ack(
    ex: Exchange, agency: str, mid: str, envelope: str, status: str, **extra: Any
) -> str:
    payload = {
        "v": 1,
        "mid": mid,
        "envelope_sha256": sha256_b64u(envelope.encode()),
        "status": status,
        "at": int(time.time() * 1000),
        **extra,
    }
    return env.sign_compact(payload, ex.agency_signing[agency], env.TYP_ACK)


def test_each_change_is_recorded_once_and_a_different_final_status_conflicts(
    exchange: Exchange,
) -> None:
    response, routing, envelope = exchange.send()
    assert response.status_code == 201
    mid = routing["mid"]
    url, hk = f"/v1/inbox/{mid}/ack", exchange.agency_headers("HK-CED")

    def post(jws: str) -> Any:
        return exchange.client.post(url, json={"ack": jws}, headers=hk)

    received = signed_ack(exchange, "HK-CED", mid, envelope, "received")
    relay()
    assert post(received).status_code == 200
    assert post(received).status_code == 200  # the same JWS again
    time.sleep(0.002)
    assert post(signed_ack(exchange, "HK-CED", mid, envelope, "received")).status_code == 200
    assert acked_events() == [("received", None)]
    final = post(signed_ack(exchange, "HK-CED", mid, envelope, "decrypted"))
    assert (final.status_code, final.json()["status"]) == (200, "decrypted")
    again = post(signed_ack(exchange, "HK-CED", mid, envelope, "decrypted"))
    assert (again.status_code, again.json()["ack_sha256"]) == (200, final.json()["ack_sha256"])
    late = post(signed_ack(exchange, "HK-CED", mid, envelope, "received"))
    assert (late.status_code, late.json()["status"]) == (200, "decrypted")  # the final stands
    conflict = post(
        signed_ack(exchange, "HK-CED", mid, envelope, "rejected", reason="label_mismatch")
    )
    assert (conflict.status_code, conflict.json()["code"]) == (409, "ack.conflict")
    assert acked_events() == [("received", None), ("decrypted", None)]
    status = exchange.client.get(
        f"/v1/messages/{mid}", headers=exchange.fp_headers("VN-GDC/fp-hcm-01")
    ).json()
    (delivery,) = status["deliveries"]
    assert (delivery["state"], delivery["ack_status"]) == ("acknowledged", "decrypted")
    assert delivery["acked_at"] is not None
    assert delivery["fetched_at"] is not None


def test_an_ack_must_be_signed_by_the_recipient_agency(exchange: Exchange) -> None:
    response, routing, envelope = exchange.send()
    assert response.status_code == 201
    relay()
    mid, hk = routing["mid"], exchange.agency_headers("HK-CED")
    url = f"/v1/inbox/{mid}/ack"
    # Signed by another agency's registered key; signed by an unregistered key.
    for key in (exchange.agency_signing["KR-KCS"], SigningKey.generate()):
        jws = env.sign_compact(
            {
                "v": 1,
                "mid": mid,
                "envelope_sha256": sha256_b64u(envelope.encode()),
                "status": "decrypted",
                "at": int(time.time() * 1000),
            },
            key,
            env.TYP_ACK,
        )
        refused = exchange.client.post(url, json={"ack": jws}, headers=hk)
        assert (refused.status_code, refused.json()["code"]) == (422, "ack.key_not_recipient")
    # Another agency cannot acknowledge what is not in its inbox.
    kr = exchange.client.post(
        url,
        json={"ack": signed_ack(exchange, "KR-KCS", mid, envelope, "decrypted")},
        headers=exchange.agency_headers("KR-KCS"),
    )
    assert kr.status_code == 404
    acked = db.call(lambda s: s.scalar(select(func.count()).where(AuditEvent.kind == "msg.acked")))
    assert acked == 0


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"status": "retired"}, "key.retired"),
        ({"status": "revoked", "revocation_reason": "superseded"}, "key.revoked"),
        ({"not_after": "past"}, "key.not_valid_now"),
        ({"not_before": "future"}, "key.not_valid_now"),
    ],
)
def test_an_ack_key_is_held_to_the_submit_key_rules(
    exchange: Exchange, change: dict[str, str], code: str
) -> None:
    """Issue 15.1: a retired or out-of-window key signed acknowledgements that were recorded."""
    from datetime import timedelta

    from sqlalchemy import update

    from broker.directory.models import PublicKey
    from broker.ids import utcnow

    response, routing, envelope = exchange.send()
    assert response.status_code == 201
    relay()
    mid, hk = routing["mid"], exchange.agency_headers("HK-CED")
    kid = exchange.agency_signing["HK-CED"].kid
    values: dict[str, Any] = dict(change)
    if values.get("not_after") == "past":
        values["not_before"] = utcnow() - timedelta(days=2)
        values["not_after"] = utcnow() - timedelta(seconds=1)
    if values.get("not_before") == "future":
        values["not_before"] = utcnow() + timedelta(hours=1)
        values["not_after"] = utcnow() + timedelta(days=2)

    async def change_key(session: Any) -> None:
        await session.execute(update(PublicKey).where(PublicKey.kid == kid).values(**values))

    db.call(change_key)
    refused = exchange.client.post(
        f"/v1/inbox/{mid}/ack",
        json={"ack": signed_ack(exchange, "HK-CED", mid, envelope, "decrypted")},
        headers=hk,
    )
    assert (refused.status_code, refused.json()["code"]) == (422, code)
    acked = db.call(lambda s: s.scalar(select(func.count()).where(AuditEvent.kind == "msg.acked")))
    assert acked == 0


def test_a_delivery_not_yet_in_the_inbox_cannot_be_acknowledged(keys: Exchange) -> None:
    from broker.errors import NotFound
    from broker.inbox import service
    from broker.messages import service as messages
    from tests.inbox.conftest import agency

    routing = keys.routing()
    envelope = keys.envelope(routing)
    outcome = db.call(messages.submit, focal_point(routing["sender_fp"]), envelope, routing["mid"])
    assert outcome.status == 201
    mid = uuid.UUID(str(routing["mid"]))
    ack = signed_ack(keys, "HK-CED", str(mid), envelope, "received")
    with pytest.raises(NotFound):  # still queued: no inbox number
        db.call(service.acknowledge, agency("HK-CED"), mid, ack)
    db.run(service.relay_all, db.session_scope)
    out = db.call(service.acknowledge, agency("HK-CED"), mid, ack)
    assert out.status == "received"
    assert acked_events() == [("received", None)]
