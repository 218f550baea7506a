"""The sender gets the recipients' signed acknowledgements back in the message status (issue 20)."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from tests.audit.conftest import sequence_all
from tests.messages.conftest import Exchange, relay, seizure_feedback

SENDER_FP = "VN-GDC/fp-hcm-01"


def _ack(exchange: Exchange, agency: str, mid: str, envelope: str, status: str) -> str:
    """Acknowledge as `agency`; returns the JWS exactly as it was sent."""
    payload = {
        "v": 1,
        "mid": mid,
        "envelope_sha256": sha256_b64u(envelope.encode()),
        "status": status,
        "at": int(time.time() * 1000),
    }
    jws = env.sign_compact(payload, exchange.agency_signing[agency], env.TYP_ACK)
    answer = exchange.client.post(
        f"/v1/inbox/{mid}/ack", json={"ack": jws}, headers=exchange.agency_headers(agency)
    )
    assert answer.status_code == 200, answer.text
    return jws


def _status(exchange: Exchange, mid: str, headers: dict[str, str] | None = None) -> Any:
    return exchange.client.get(
        f"/v1/messages/{mid}", headers=headers or exchange.fp_headers(SENDER_FP)
    )


def _leaf(exchange: Exchange, index: int) -> dict[str, Any]:
    """The leaf at `index` as the sender agency reads it from the log."""
    page = exchange.client.get(
        "/v1/log/leaves",
        params={"start": index, "end": index + 1},
        headers=exchange.agency_headers("VN-GDC"),
    ).json()
    (item,) = page["leaves"]
    doc: dict[str, Any] = json.loads(base64.b64decode(item["leaf"]))
    return doc


def test_the_sender_sees_each_recipients_ack_as_it_was_signed(exchange: Exchange) -> None:
    response, routing, envelope = exchange.send()
    assert response.status_code == 201, response.text
    mid = routing["mid"]
    relay()
    (before,) = _status(exchange, mid).json()["deliveries"]
    assert (before["ack"], before["ack_log_index"], before["feedback"]) == (None, None, [])

    received = _ack(exchange, "HK-CED", mid, envelope, "received")
    decrypted = _ack(exchange, "HK-CED", mid, envelope, "decrypted")
    sequence_all()
    (delivery,) = _status(exchange, mid).json()["deliveries"]
    # The latest acknowledgement, byte for byte, and where the log recorded it.
    assert delivery["ack"] == decrypted != received
    assert delivery["ack_sha256"] == sha256_b64u(decrypted.encode())
    leaf = _leaf(exchange, delivery["ack_log_index"])
    assert json.loads(base64.b64decode(delivery["ack_leaf"])) == leaf
    assert (leaf["kind"], leaf["ack_sha256"], leaf["mid"]) == (
        "msg.acked",
        delivery["ack_sha256"],
        mid,
    )
    assert delivery["ack_logged_at"] is not None
    logged_ms = leaf["ts"]
    assert int(datetime.fromisoformat(delivery["ack_logged_at"]).timestamp() * 1000) == logged_ms


def test_another_party_does_not_see_the_acks(exchange: Exchange) -> None:
    _, routing, envelope = exchange.send()
    relay()
    jws = _ack(exchange, "HK-CED", routing["mid"], envelope, "decrypted")
    assert _status(exchange, routing["mid"]).json()["deliveries"][0]["ack"] == jws
    for headers in (
        exchange.agency_headers("HK-CED"),  # the recipient itself
        exchange.agency_headers("KR-KCS"),
        exchange.fp_headers("NZ-POL/fp-01"),
    ):
        other = _status(exchange, routing["mid"], headers)
        assert other.status_code in (403, 404), other.text
        assert jws not in other.text


def test_feedback_of_each_recipient_is_listed(exchange: Exchange) -> None:
    members = ["CN-GACC", "HK-CED", "KR-KCS"]
    response, routing, envelope = exchange.send(
        recipients=members,
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["conveyance", "person"],
    )
    assert response.status_code == 201, response.text
    relay()
    feedback = seizure_feedback(exchange, routing["mid"])
    back = exchange.submit(exchange.envelope(feedback), feedback)
    assert back.status_code == 201, back.text
    # Another alert of the sender with its own feedback is not listed under this one.
    other, other_routing, _ = exchange.send()
    assert other.status_code == 201, other.text
    relay()
    unrelated = exchange.routing(
        "HK-CED/fp-01",
        kind="feedback",
        recipients=["VN-GDC"],
        offence="cites_wildlife",
        subject_types=["seizure"],
        in_reply_to=other_routing["mid"],
        outcome="no_find",
    )
    assert exchange.submit(exchange.envelope(unrelated), unrelated).status_code == 201
    acks = {
        agency: _ack(exchange, agency, routing["mid"], envelope, "decrypted") for agency in members
    }

    status = _status(exchange, routing["mid"])
    assert status.status_code == 200, status.text
    by_recipient = {d["recipient"]: d for d in status.json()["deliveries"]}
    assert {r: d["feedback"] for r, d in by_recipient.items()} == {
        "CN-GACC": [],
        "HK-CED": [feedback["mid"]],
        "KR-KCS": [],
    }
    assert {r: d["ack"] for r, d in by_recipient.items()} == acks
