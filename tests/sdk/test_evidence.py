"""Evidence of receipt on the sender's side: `broker status --evidence` and broker.sdk.evidence."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from broker.cli.main import app
from broker.crypto import envelope as env
from broker.sdk import evidence
from broker.sdk.agent import InboxPuller
from broker.sdk.client import BrokerClient
from broker.sdk.keystore import Keystore
from tests.sdk.conftest import BODY


@pytest.fixture
def acked(agency_side: dict[str, Any]) -> dict[str, Any]:
    """An alert VN-GDC sent to HK-CED, pulled and acknowledged by HK-CED, and logged."""
    from tests.audit.conftest import sequence_all
    from tests.messages.conftest import relay
    from tests.sdk.test_cli_flow import send

    s = agency_side
    sent = send(s, BODY, "--receipts", str(s["tmp"] / "sent"), "--json")
    assert sent.exit_code == 0, sent.output
    s["mid"] = json.loads(sent.output)["mid"]
    relay()
    with BrokerClient(s["url"], s["hk"]) as client:
        pulled = InboxPuller(client, Keystore.open(s["keys"]), "HK-CED", s["tmp"] / "inbox").pull()
    assert [p.status for p in pulled] == ["decrypted"]
    sequence_all()
    return s


def _log_key() -> str:
    from broker import keyring

    return keyring.load_or_create().log_verifier_key


def _status(s: dict[str, Any], *extra: str) -> Any:
    return s["runner"].invoke(
        app,
        [
            "status",
            s["mid"],
            "--token",
            s["fp"],
            "--receipts",
            str(s["tmp"] / "sent"),
            "--evidence",
            str(s["tmp"] / "sent"),
            *extra,
        ],
    )


def test_status_evidence_keeps_and_verifies_the_ack_at_the_log_time(acked: dict[str, Any]) -> None:
    s = acked
    result = _status(s, "--log-key", _log_key(), "--json")
    assert result.exit_code == 0, result.output
    state = json.loads(result.output)
    (delivery,) = state["deliveries"]
    kept = s["tmp"] / "sent" / f"{s['mid']}.HK-CED.ack.jws"
    assert kept.read_text() == delivery["ack"]
    (checked,) = state["evidence"]
    assert checked["recipient"] == "HK-CED"
    assert (checked["verified"], checked["status"], checked["time_source"]) == (
        True,
        "decrypted",
        "log",
    )
    assert checked["log_index"] == delivery["ack_log_index"]
    logged = datetime.fromisoformat(delivery["ack_logged_at"])
    assert checked["checked_at"] == int(logged.timestamp())
    table = _status(s, "--log-key", _log_key(), "--table")
    assert table.exit_code == 0, table.output
    assert "HK-CED: verified decrypted: key " in table.output
    assert "the log's time" in table.output


def test_without_a_log_key_the_time_is_the_brokers_and_says_so(acked: dict[str, Any]) -> None:
    result = _status(acked, "--json")
    assert result.exit_code == 0, result.output
    (checked,) = json.loads(result.output)["evidence"]
    assert (checked["verified"], checked["time_source"]) == (True, "broker")
    assert any("no pinned log key" in n for n in checked["notes"])


def _tampered(s: dict[str, Any], monkeypatch: pytest.MonkeyPatch, ack: str) -> Any:
    """`broker status --evidence` against a broker that serves `ack` as HK-CED's."""
    real = BrokerClient.status

    def status(self: BrokerClient, mid: str) -> dict[str, Any]:
        state = real(self, mid)
        state["deliveries"][0]["ack"] = ack
        return state

    monkeypatch.setattr(BrokerClient, "status", status)
    return _status(s, "--log-key", _log_key(), "--table")


def _payload(ack: str) -> dict[str, Any]:
    import base64

    segment = ack.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return doc


def test_a_tampered_ack_is_reported_not_verified(
    acked: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = acked
    with BrokerClient(s["url"], s["fp"]) as client:
        ack = client.status(s["mid"])["deliveries"][0]["ack"]
    header, _, signature = ack.split(".")
    payload = _payload(ack) | {"status": "rejected", "reason": "other"}
    forged_body = env.b64u_encode(json.dumps(payload).encode())
    result = _tampered(s, monkeypatch, f"{header}.{forged_body}.{signature}")
    assert result.exit_code == 1, result.output
    assert "HK-CED: NOT verified: envelope.bad_signature" in result.output


def test_an_ack_signed_by_a_key_not_of_the_recipient_is_not_verified(
    acked: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = acked
    with BrokerClient(s["url"], s["fp"]) as client:
        ack = client.status(s["mid"])["deliveries"][0]["ack"]
    # The sender's own focal point key: registered in the directory, but not HK-CED's.
    signer = Keystore.open(s["keys"]).signing_key("VN-GDC/fp-hcm-01")
    forged = env.sign_compact(_payload(ack), signer, env.TYP_ACK)
    result = _tampered(s, monkeypatch, forged)
    assert result.exit_code == 1, result.output
    assert (
        f"HK-CED: NOT verified: signed with key {signer.kid}, which is not a signing key of HK-CED"
        in result.output
    )


def test_an_ack_of_another_envelope_is_not_verified(acked: dict[str, Any]) -> None:
    s = acked
    with BrokerClient(s["url"], s["fp"]) as client:
        state = client.status(s["mid"])
        (checked,) = evidence.ack_evidence(client, state, envelope_sha256="A" * 43)
        (right,) = evidence.ack_evidence(
            client, state, envelope_sha256=state["envelope_sha256"], log_key=_log_key()
        )
    assert not checked.verified
    assert checked.problem == "it acknowledges another envelope than the one we sent"
    assert right.verified
    assert right.time_source == "log"


def test_a_leaf_that_is_not_the_acks_gives_no_log_time(acked: dict[str, Any]) -> None:
    s = acked
    with BrokerClient(s["url"], s["fp"]) as client:
        state = client.status(s["mid"])
        # The message's own leaf, proven in the log, but it records the message, not the ack.
        delivery = state["deliveries"][0]
        delivery["ack_log_index"] = state["log_index"]
        (checked,) = evidence.ack_evidence(
            client, state, envelope_sha256=state["envelope_sha256"], log_key=_log_key()
        )
    assert not checked.verified
    assert str(checked.problem).startswith(
        f"leaf {state['log_index']} is not proven in the signed log"
    )


def test_evidence_needs_the_receipt(acked: dict[str, Any], tmp_path: Path) -> None:
    s = acked
    result = s["runner"].invoke(
        app,
        [
            "status",
            s["mid"],
            "--token",
            s["fp"],
            "--receipts",
            str(tmp_path / "none"),
            "--evidence",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: --receipts: no receipt ")
    assert "Traceback" not in result.output


def test_a_proven_leaf_of_something_else_gives_no_log_time(acked: dict[str, Any]) -> None:
    import base64

    s = acked
    with BrokerClient(s["url"], s["fp"]) as client:
        state = client.status(s["mid"])
    with BrokerClient(s["url"], s["hk"]) as reader:  # an agency token reads its leaves
        index = state["log_index"]
        (leaf,) = reader.get("/v1/log/leaves", start=index, end=index + 1)["leaves"]
    assert json.loads(base64.b64decode(leaf["leaf"]))["kind"] == "msg.accepted"
    # The message's own leaf, proven in the log, offered as the acknowledgement's.
    state["deliveries"][0] |= {"ack_log_index": index, "ack_leaf": leaf["leaf"]}
    with BrokerClient(s["url"], s["fp"]) as client:
        (checked,) = evidence.ack_evidence(
            client, state, envelope_sha256=state["envelope_sha256"], log_key=_log_key()
        )
    assert not checked.verified
    assert checked.problem == f"leaf {index} does not record this acknowledgement"


@pytest.mark.parametrize(("revoked_after_s", "verified"), [(-1, False), (1, True)])
def test_the_key_is_checked_at_the_log_time(
    acked: dict[str, Any], monkeypatch: pytest.MonkeyPatch, revoked_after_s: int, verified: bool
) -> None:
    """A key revoked after the log recorded the acknowledgement still proves it; before, not."""
    s = acked
    with BrokerClient(s["url"], s["fp"]) as client:
        state = client.status(s["mid"])
    logged = int(datetime.fromisoformat(state["deliveries"][0]["ack_logged_at"]).timestamp())
    real = BrokerClient.jwks

    def jwks(self: BrokerClient, agency: str | None = None) -> list[dict[str, Any]]:
        return [k | {"revoked_at": logged + revoked_after_s} for k in real(self, agency)]

    monkeypatch.setattr(BrokerClient, "jwks", jwks)
    with BrokerClient(s["url"], s["fp"]) as client:
        (checked,) = evidence.ack_evidence(
            client, state, envelope_sha256=state["envelope_sha256"], log_key=_log_key()
        )
    assert (checked.verified, checked.time_source, checked.checked_at) == (verified, "log", logged)
    if not verified:
        assert str(checked.problem).startswith("key.not_valid_at")
