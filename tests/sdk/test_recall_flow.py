"""Recall, the agency side (issue 18.5), against a live broker on both databases: VN-GDC's focal
point recalls with `broker recall`; HK-CED's puller verifies the statement, erases its copy
(keeping a tombstone), answers `erased` and acknowledges the notice; `broker status` shows it.
A statement that does not verify, or names a message HK-CED does not hold, erases nothing."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from uuid_utils.compat import uuid7

from broker import keyring
from broker.crypto import envelope as env
from broker.crypto import keys
from broker.sdk.agent import InboxPuller, Pulled
from broker.sdk.client import BrokerClient
from broker.sdk.keystore import Keystore
from tests.sdk.test_officer import FP, cli, pull, send_alert
from tests.sdk.test_puller_log import Hostile

REFERENCE = "HCMC-PC-2026/0917"


def recall(s: dict[str, Any], mid: str, *extra: str) -> dict[str, Any]:
    """`broker recall` from VN-GDC's focal point; the relay then delivers any notice."""
    from broker.inbox import jobs

    done = cli(
        s, "recall", mid, "--from", FP, "--token", s["fp"], "--keystore", str(s["keys"]),
        "--json", *extra,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    jobs.relay()
    answer: dict[str, Any] = json.loads(done.output)
    return answer


def pulled(s: dict[str, Any]) -> list[dict[str, Any]]:
    done = pull(s, "--json")
    assert done.exit_code == 0, done.output
    rows: list[dict[str, Any]] = json.loads(done.output)
    return rows


def status(s: dict[str, Any], mid: str, *extra: str) -> Any:
    done = cli(s, "status", mid, "--token", s["fp"], *extra)
    assert done.exit_code == 0, done.output
    return done


def held(s: dict[str, Any], mid: str) -> Path:
    return Path(s["tmp"]) / "inbox" / "alerts" / "VN-GDC" / mid


def test_a_recall_after_the_pull_erases_the_copy_and_is_answered(
    agency_side: dict[str, Any],
) -> None:
    s = agency_side
    mid = send_alert(s)
    assert [(r["mid"], r["status"]) for r in pulled(s)] == [(mid, "decrypted")]
    folder = held(s, mid)
    assert (folder / "alert.json").exists()
    answer = recall(s, mid, "--reason", "erasure_request", "--legal-reference", REFERENCE)
    assert (answer["mid"], answer["reason"], answer["legal_reference"]) == (
        mid,
        "erasure_request",
        REFERENCE,
    )
    assert [(r["recipient"], r["outcome"]) for r in answer["recipients"]] == [
        ("HK-CED", "notified")
    ]
    (row,) = pulled(s)
    assert (row["mid"], row["status"], row["recalls"]) == (answer["rid"], "recalled", mid)
    # The envelope and what it decrypted to are gone; the tombstone holds no content.
    names = {p.name for p in folder.iterdir()}
    assert not names & {"outer.jws", "inner.jws", "alert.json"}
    assert {"recalled.json", "result.json", "receipt.jws"} <= names
    tombstone = json.loads((folder / "recalled.json").read_text())
    assert (tombstone["rid"], tombstone["mid"], tombstone["reason"]) == (
        answer["rid"],
        mid,
        "erasure_request",
    )
    assert tombstone["legal_reference"] == REFERENCE
    assert isinstance(tombstone["erased_at"], int)
    assert env.compact_kid(tombstone["recall"], env.TYP_RECALL)
    assert "CSQU3054383" not in json.dumps(tombstone)  # the body's container number
    notice = Path(s["tmp"]) / "inbox" / "recalls" / "VN-GDC" / answer["rid"]
    assert json.loads((notice / "result.json").read_text())["complied"] is True
    [shown] = json.loads(cli(s, "inbox", "show", mid, "--state", str(s["tmp"] / "inbox")).output)
    assert (shown["status"], shown["recall"]["rid"]) == ("recalled", answer["rid"])
    assert "alert" not in shown
    listed = cli(s, "inbox", "show", "--state", str(s["tmp"] / "inbox"), "--table")
    assert "recalled" in listed.output
    # The sender's status: HK-CED erased its copy; the notice itself was acknowledged.
    state = json.loads(status(s, mid, "--json").output)
    (copy,) = state["recall"]["recipients"]
    assert (copy["recipient"], copy["outcome"], copy["compliance"]) == (
        "HK-CED",
        "notified",
        "erased",
    )
    assert copy["overdue"] is False
    table = status(s, mid, "--table").output
    assert f"erasure_request ({REFERENCE})" in table
    assert "answers due" in table
    assert any(line.split()[:2] == ["HK-CED", "erased"] for line in table.splitlines())
    # A restart that lost the cursor: both items come again, nothing fails or comes back.
    (Path(s["tmp"]) / "inbox" / "cursor").unlink()
    assert {r["status"] for r in pulled(s)} == {"duplicate"}
    assert not (folder / "alert.json").exists()
    assert json.loads(status(s, mid, "--json").output)["recall"]["recipients"][0]["compliance"] == (
        "erased"
    )


def test_a_recall_before_the_pull_withdraws_the_copy(agency_side: dict[str, Any]) -> None:
    s = agency_side
    mid = send_alert(s)
    answer = recall(s, mid, "--reason", "wrong_recipient")
    assert [(r["recipient"], r["outcome"]) for r in answer["recipients"]] == [
        ("HK-CED", "withdrawn")
    ]
    assert pulled(s) == []  # never served, and no notice: HK-CED never held it
    assert not held(s, mid).exists()
    state = json.loads(status(s, mid, "--json").output)
    assert [d["state"] for d in state["deliveries"]] == ["recalled"]
    table = status(s, mid, "--table").output
    assert any(line.split()[:2] == ["HK-CED", "withdrawn"] for line in table.splitlines())
    # A second recall answers with the first one's result.
    again = recall(s, mid, "--reason", "sent_in_error")
    assert (again["rid"], again["reason"]) == (answer["rid"], "wrong_recipient")


# --- notices that must not erase anything ---------------------------------------------------


@dataclass
class Forger:
    """Signs with the real focal point key's kid in the header, but with another key."""

    kid: str
    key: keys.SigningKey

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def statement(mid: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "rid": str(uuid7()),
        "mid": mid,
        "sender": "VN-GDC",
        "sender_fp": FP,
        "reason": "inaccurate",
        "iat": int(time.time()),
        **extra,
    }


def inject(jws: str, rid: str) -> Hostile:
    """What a dishonest broker would serve: `jws` as a recall notice, accepted in its log and
    receipted, in place of HK-CED's next inbox page (acks of it answered without the broker)."""
    from broker import db
    from broker.audit import jobs as audit_jobs
    from broker.audit import service as audit
    from broker.messages.repository import leaf_index
    from broker.messages.service import sign_receipt

    digest = keys.sha256_b64u(jws.encode())
    details = {
        "mid": rid,
        "kind": "recall",
        "sender": "VN-GDC",
        "sender_fp": FP,
        "sender_kid": env.compact_kid(jws, env.TYP_RECALL),
        "recipients": ["HK-CED"],
        "agreement": "VN-HK-CMAA-2013",
        "envelope_sha256": digest,
        "policy_sha256": "x",
    }
    event = db.call(audit.record, "msg.accepted", actor=FP, subject="VN-GDC", details=details)
    audit_jobs.sequence_pending()
    index = db.call(leaf_index, event.id)
    receipt = sign_receipt(uuid.UUID(rid), "VN-GDC", digest, event.created_at, event.id)
    served: list[bool] = []

    def rewrite(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path != "/v1/inbox" or served:
            return None
        served.append(True)
        seq = 10**6
        item = {
            "seq": seq,
            "mid": rid,
            "sender": "VN-GDC",
            "kind": "recall",
            "envelope": jws,
            "receipt": receipt,
            "envelope_sha256": digest,
            "received_at": event.created_at.isoformat(),
            "log_index": index,
        }
        return httpx2.Response(200, json={"items": [item], "next_cursor": str(seq), "more": False})

    transport = Hostile(rewrite)
    transport.fake_acks.add(digest)
    return transport


def pull_through(s: dict[str, Any], transport: Hostile) -> list[Pulled]:
    with BrokerClient(s["url"], s["hk"], transport=transport) as client:
        store = Keystore.open(s["keys"]).with_directory(client)
        log_key = keyring.load_or_create().log_verifier_key
        return InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox", log_key=log_key).pull()


def untouched(s: dict[str, Any], mid: str) -> None:
    folder = held(s, mid)
    assert {"outer.jws", "inner.jws", "alert.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "recalled.json").exists()


def test_a_forged_statement_is_refused_and_erases_nothing(agency_side: dict[str, Any]) -> None:
    s = agency_side
    mid = send_alert(s)
    assert [r["status"] for r in pulled(s)] == ["decrypted"]
    real = Keystore.open(s["keys"]).signing_key(FP)
    payload = statement(mid)
    forged = env.sign_compact(payload, Forger(real.kid, keys.SigningKey.generate()), env.TYP_RECALL)  # type: ignore[arg-type]
    transport = inject(forged, payload["rid"])
    (got,) = pull_through(s, transport)
    assert (got.status, got.reason, got.recalls) == ("rejected", "bad_signature", None)
    untouched(s, mid)
    assert [(a["mid"], a["status"], a.get("reason")) for a in transport.acks] == [
        (payload["rid"], "rejected", "bad_signature")
    ]
    assert json.loads(status(s, mid, "--json").output)["recall"] is None


def test_a_statement_by_a_key_not_in_the_directory_is_refused(
    agency_side: dict[str, Any],
) -> None:
    s = agency_side
    mid = send_alert(s)
    assert [r["status"] for r in pulled(s)] == ["decrypted"]
    payload = statement(mid)
    stranger = env.sign_compact(payload, keys.SigningKey.generate(), env.TYP_RECALL)
    (got,) = pull_through(s, inject(stranger, payload["rid"]))
    assert got.status == "rejected"
    assert got.detail is not None
    assert "not in the directory" in got.detail
    untouched(s, mid)


def test_a_statement_naming_a_message_not_held_is_refused(agency_side: dict[str, Any]) -> None:
    s = agency_side
    mid = send_alert(s)
    assert [r["status"] for r in pulled(s)] == ["decrypted"]
    payload = statement(str(uuid7()), reason="legal_order", legal_reference=REFERENCE)
    signed = env.sign_compact(payload, Keystore.open(s["keys"]).signing_key(FP), env.TYP_RECALL)
    transport = inject(signed, payload["rid"])
    (got,) = pull_through(s, transport)
    assert (got.status, got.reason) == ("rejected", "not_addressed_to_us")
    untouched(s, mid)
    assert [a["status"] for a in transport.acks] == ["rejected"]
    assert not list((Path(s["tmp"]) / "inbox" / "alerts").rglob("recalled.json"))
