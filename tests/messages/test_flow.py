"""The whole exchange over HTTP: submit, deliver, poll, open, acknowledge, follow status."""

from __future__ import annotations

from typing import Any

from broker.crypto import envelope as env
from broker.crypto.keys import parse_public_jwk
from tests.agreements.changes import registrar
from tests.messages.conftest import Exchange, relay, seizure_feedback


def test_alert_reaches_the_partner_who_opens_and_acknowledges(exchange: Exchange) -> None:
    response, routing, envelope = exchange.send()
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["mid"] == routing["mid"]
    relay()
    page = exchange.client.get("/v1/inbox", headers=exchange.agency_headers("HK-CED")).json()
    (item,) = page["items"]
    assert item["envelope"] == envelope
    assert item["receipt"] == receipt["receipt"]
    assert page["next_cursor"] == str(item["seq"])
    jwks = exchange.client.get(
        "/v1/directory/jwks?agency=VN-GDC", headers=exchange.agency_headers("HK-CED")
    ).json()
    kid = env.compact_kid(envelope, env.TYP_OUTER)
    sender_jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    opened = env.open_envelope(
        envelope,
        my_agency="HK-CED",
        my_enc_keys=[exchange.encryption["HK-CED"]],
        sender_sig_jwk=parse_public_jwk(sender_jwk),
    )
    assert opened.body["title"].startswith("Suspected ivory")
    acked = exchange.ack("HK-CED", routing["mid"], envelope)
    assert acked.status_code == 200, acked.text
    assert exchange.ack("HK-CED", routing["mid"], envelope).status_code == 200  # idempotent
    status = exchange.client.get(
        f"/v1/messages/{routing['mid']}", headers=exchange.fp_headers("VN-GDC/fp-hcm-01")
    ).json()
    (delivery,) = status["deliveries"]
    assert delivery["state"] == "acknowledged"
    assert delivery["ack_status"] == "decrypted"
    # Another agency sees nothing of it.
    other = exchange.client.get(
        f"/v1/messages/{routing['mid']}", headers=exchange.agency_headers("HK-CED")
    )
    assert other.status_code == 404
    assert (
        exchange.client.get("/v1/inbox", headers=exchange.agency_headers("KR-KCS")).json()["items"]
        == []
    )


def test_the_same_envelope_again_returns_the_original_receipt(exchange: Exchange) -> None:
    first, routing, envelope = exchange.send()
    again = exchange.submit(envelope, routing)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["receipt"] == first.json()["receipt"]
    relay()
    assert (
        len(
            exchange.client.get("/v1/inbox", headers=exchange.agency_headers("HK-CED")).json()[
                "items"
            ]
        )
        == 1
    )


def test_multilateral_alert_and_feedback(exchange: Exchange) -> None:
    members = ["CN-GACC", "HK-CED", "KR-KCS"]
    response, routing, _ = exchange.send(
        recipients=members,
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["conveyance", "person"],
    )
    assert response.status_code == 201, response.text
    relay()
    for agency in members:
        assert (
            len(
                exchange.client.get("/v1/inbox", headers=exchange.agency_headers(agency)).json()[
                    "items"
                ]
            )
            == 1
        )
    feedback = seizure_feedback(exchange, routing["mid"])
    back = exchange.submit(exchange.envelope(feedback), feedback)
    assert back.status_code == 201, back.text
    # An agency that did not receive the alert cannot send feedback on it.
    stranger = exchange.routing(
        "VN-MPS/fp-01",
        kind="feedback",
        recipients=["NZ-POL"],
        agreement="VN-NZ-TNC-2019",
        offence="narcotics",
        subject_types=["person"],
        in_reply_to=routing["mid"],
        outcome="no_find",
    )
    refused = exchange.submit(exchange.envelope(stranger), stranger)
    assert refused.json()["code"] == "scope.feedback_not_recipient"


def test_dry_run_tells_before_encrypting(exchange: Exchange) -> None:
    headers = exchange.fp_headers("NZ-POL/fp-01")
    routing = exchange.routing(
        "NZ-POL/fp-01",
        recipients=["VN-MPS"],
        agreement="VN-NZ-TNC-2019",
        offence="narcotics",
        subject_types=["person"],
    )
    answer = exchange.client.post(
        "/v1/messages:check", json={"routing": routing}, headers=headers
    ).json()
    assert answer["decision"] == "reject"
    assert answer["code"] == "scope.direction_excluded"
    routing["offence"] = "money_laundering"
    answer = exchange.client.post(
        "/v1/messages:check", json={"routing": routing}, headers=headers
    ).json()
    assert answer["decision"] == "accept"
    assert answer["recipient_keys"] == {"VN-MPS": exchange.encryption["VN-MPS"].kid}


def test_dry_run_tells_a_non_party_nothing_about_an_agreement(exchange: Exchange) -> None:
    """Issue 15.7: a focal point learnt which agreements exist, and their suspension and dates,
    before the check that it is a party. NZ-POL is no party to VN-HK-CMAA-2013."""
    headers = exchange.fp_headers("NZ-POL/fp-01")

    def ask(agreement: str) -> dict[str, Any]:
        routing = exchange.routing(
            "NZ-POL/fp-01", recipients=["VN-GDC"], agreement=agreement, offence="narcotics"
        )
        answer = exchange.client.post(
            "/v1/messages:check", json={"routing": routing}, headers=headers
        ).json()
        return {**answer, "detail": answer["detail"].replace(agreement, "<id>")}

    nothing = ask("XX-NO-SUCH-AGREEMENT")
    assert (nothing["decision"], nothing["code"]) == ("reject", "scope.agreement_unknown")
    assert ask("VN-HK-CMAA-2013") == nothing
    # A party suspends the agreement at once (a restriction needs no approvals).
    suspended = exchange.client.post(
        "/v1/agreements/VN-HK-CMAA-2013/restrictions",
        json={"action": "suspend", "reason": "Review of the exchange arrangements"},
        headers=registrar(exchange.token_for, "HK-CED"),
    )
    assert suspended.status_code == 201, suspended.text
    assert ask("VN-HK-CMAA-2013") == nothing


def test_rejection_is_audited_with_the_hash_only(exchange: Exchange) -> None:
    from broker import db
    from broker.audit import repository

    response, _, envelope = exchange.send(recipients=["NZ-POL"])
    assert response.json()["code"] == "scope.recipient_not_party"
    (event,) = db.call(repository.list_events, kind="msg.rejected")
    assert event.details["reason"] == "scope.recipient_not_party"
    assert envelope not in str(event.details)
    assert len(event.details["envelope_sha256"]) == 43
