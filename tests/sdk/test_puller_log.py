"""Agencies check the log (PROTOCOL 4.5 step 2): the puller against a live broker and a hostile one.

The hostile broker is the real one behind an httpx2 transport that rewrites its answers (or
adds to them), and, where it must, writes what a dishonest operator would into its own log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from broker import keyring
from broker.crypto import envelope as env
from broker.crypto import keys, note
from broker.sdk import agent
from broker.sdk.agent import InboxPuller, Pulled
from broker.sdk.client import BrokerClient
from broker.sdk.keystore import Keystore
from tests.sdk.conftest import BODY
from tests.sdk.test_officer import send_alert

FP = "VN-GDC/fp-hcm-01"
Rewrite = Callable[[httpx2.Request, httpx2.Response], httpx2.Response | None]


class Hostile(httpx2.BaseTransport):
    """The real broker, whose answers `rewrite` may replace; acks it is asked to swallow
    (`fake_acks`, by envelope hash) are answered 200 and kept in `acks`."""

    def __init__(self, rewrite: Rewrite) -> None:
        self.rewrite = rewrite
        self.real = httpx2.HTTPTransport()
        self.fake_acks: set[str] = set()
        self.acks: list[dict[str, Any]] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith("/ack"):
            payload = _payload(json.loads(request.read())["ack"])
            self.acks.append(payload)
            if payload["envelope_sha256"] in self.fake_acks:
                return httpx2.Response(200, json={"mid": payload["mid"]})
        response = self.real.handle_request(request)
        response.read()
        return self.rewrite(request, response) or response

    def close(self) -> None:
        self.real.close()


def _payload(jws: str) -> dict[str, Any]:
    part = jws.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def _items(rewrite_item: Callable[[dict[str, Any]], None]) -> Rewrite:
    """A rewrite of every inbox item in place."""

    def rewrite(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path != "/v1/inbox" or response.status_code != 200:
            return None
        page = response.json()
        for item in page["items"]:
            rewrite_item(item)
        return httpx2.Response(200, json=page)

    return rewrite


def _pull(s: dict[str, Any], transport: httpx2.BaseTransport | None = None) -> list[Pulled]:
    with BrokerClient(s["url"], s["hk"], transport=transport) as client:
        store = Keystore.open(s["keys"]).with_directory(client)
        log_key = keyring.load_or_create().log_verifier_key
        return InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox", log_key=log_key).pull()


def _kept(s: dict[str, Any]) -> note.Checkpoint:
    text = json.loads((s["tmp"] / "inbox" / "log" / "checkpoint.json").read_text())["checkpoint"]
    return note.verify_checkpoint(
        text, note.parse_verifier_key(keyring.load_or_create().log_verifier_key)
    )


def _signed(size: int, root: bytes) -> str:
    """A checkpoint the broker's own log key signs: what a broker showing a fork would serve."""
    broker = keyring.load_or_create()
    text = note.Checkpoint(broker.log_origin, size, root).format()
    return note.sign_note(text, broker.log_origin, broker.log.private_key)


def test_the_normal_path_proves_the_leaf_and_keeps_the_checkpoint(
    agency_side: dict[str, Any],
) -> None:
    s = agency_side
    first = send_alert(s)
    assert [(r.mid, r.status) for r in _pull(s)] == [(first, "decrypted")]
    size = _kept(s).size
    second = send_alert(s)
    (got,) = _pull(s)
    assert (got.mid, got.status) == (second, "decrypted")
    assert _kept(s).size > size  # the newer checkpoint, proven consistent, replaced it
    assert got.folder is not None
    evidence = json.loads((got.folder / "log.json").read_text())
    leaf = json.loads(base64.b64decode(evidence["leaf"]))
    assert (leaf["kind"], leaf["mid"], leaf["index"]) == ("msg.accepted", second, evidence["index"])
    assert json.loads((got.folder / "result.json").read_text())["envelope_sha256"] == (
        keys.sha256_b64u((got.folder / "outer.jws").read_bytes())
    )


@pytest.mark.parametrize("fork", ["same size", "later size"])
def test_a_forked_checkpoint_is_refused(agency_side: dict[str, Any], fork: str) -> None:
    s = agency_side
    send_alert(s)
    assert [r.status for r in _pull(s)] == ["decrypted"]
    kept = _kept(s)
    mid = send_alert(s)

    def rewrite(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path != "/v1/log/checkpoint":
            return None
        real = note.Checkpoint.parse(response.text.split("\n\n")[0] + "\n")
        size = kept.size if fork == "same size" else real.size
        forged = _signed(size, bytes(32))  # another root, properly signed
        return httpx2.Response(200, text=forged, headers={"content-type": "text/plain"})

    transport = Hostile(rewrite)
    (got,) = _pull(s, transport)
    assert (got.mid, got.status, got.reason) == (mid, "rejected", "log_proof_failed")
    assert got.detail is not None
    assert "split_view" in got.detail
    assert got.folder is not None
    assert not (got.folder / "alert.json").exists()
    assert not (got.folder / "inner.jws").exists()
    assert [(a["mid"], a["status"], a.get("reason")) for a in transport.acks] == [
        (mid, "rejected", "log_proof_failed")
    ]
    assert _kept(s) == kept  # the fork never replaces what was kept


def test_a_backdated_received_at_does_not_save_a_compromised_key(
    agency_side: dict[str, Any], token_for: Any
) -> None:
    """Key valid from two hours ago, compromised since 100 s ago; the message was logged now and
    the broker says it was received 200 s ago: by that time the key would have been fine."""
    from tests.messages.conftest import relay

    s = agency_side
    now = datetime.now(UTC)
    signer = keys.SigningKey.generate()
    with BrokerClient(s["url"], token_for("admin")) as admin:
        admin._call(
            "POST",
            "/v1/admin/keys",
            json={
                "agency_id": "VN-GDC",
                "focal_point_id": FP,
                "jwk": signer.public.jwk,
                "not_before": (now - timedelta(hours=2)).isoformat(),
            },
        )
    with BrokerClient(s["url"], s["fp"]) as client:
        routing = agent.routing_for(
            FP,
            recipients=["HK-CED"],
            agreement="VN-HK-CMAA-2013",
            offence="cites_wildlife",
            body=json.loads(BODY.read_text()),
        )
        routing["iat"] -= 250  # within the broker's 300 s
        envelope = env.build_envelope(
            routing,
            json.loads(BODY.read_text()),
            signer,
            agent.recipient_keys(client, ["HK-CED"]),
        )
        client.submit(envelope, routing["mid"])
    with BrokerClient(s["url"], token_for("admin")) as admin:
        admin._call(
            "POST",
            f"/v1/admin/keys/{signer.kid}/revoke",
            json={
                "reason": "key_compromise",
                "compromised_since": (now - timedelta(seconds=100)).isoformat(),
            },
        )
    relay()
    backdated = (now - timedelta(seconds=200)).isoformat()

    def backdate(item: dict[str, Any]) -> None:
        item["received_at"] = backdated

    (got,) = _pull(s, Hostile(_items(backdate)))
    assert (got.mid, got.status, got.reason) == (routing["mid"], "rejected", "key_not_valid")
    assert got.detail is not None
    assert "compromised" in got.detail


def test_a_reused_mid_with_another_envelope_is_opened_and_refused(
    agency_side: dict[str, Any],
) -> None:
    """The broker logs (and receipts) a second envelope the sender made under a mid it already
    delivered: the log proof holds, so only the puller's deduplication can catch it."""
    from broker import db
    from broker.audit import jobs as audit_jobs
    from broker.audit import service as audit
    from broker.messages.repository import leaf_index
    from broker.messages.service import MAX_MERGE_DELAY_MS

    s = agency_side
    mid = send_alert(s)
    (first,) = _pull(s)
    assert first.status == "decrypted"
    assert first.folder is not None
    original = (first.folder / "alert.json").read_text()
    opened = json.loads(original)
    store = Keystore.open(s["keys"])
    with BrokerClient(s["url"], s["hk"]) as client:
        again = env.build_envelope(
            opened["routing"],
            opened["body"],
            store.signing_key(FP),
            agent.recipient_keys(client, ["HK-CED"]),
        )
    digest = keys.sha256_b64u(again.encode())
    routing = opened["routing"]
    details = {
        "mid": mid,
        "kind": routing["kind"],
        "sender": "VN-GDC",
        "sender_fp": FP,
        "sender_kid": env.parse_outer_header(again),
        "recipients": routing["recipients"],
        "agreement": routing["agreement"],
        "operation": routing["operation"],
        "offence": routing["offence"],
        "subject_types": routing["subject_types"],
        "handling": routing["handling"],
        "envelope_sha256": digest,
        "policy_sha256": "x",
    }
    event = db.call(audit.record, "msg.accepted", actor=FP, subject="VN-GDC", details=details)
    audit_jobs.sequence_pending()
    index = db.call(leaf_index, event.id)
    broker = keyring.load_or_create()
    receipt = env.sign_compact(
        {
            "v": 1,
            "mid": mid,
            "sender": "VN-GDC",
            "envelope_sha256": digest,
            "accepted_at": int(event.created_at.timestamp() * 1000),
            "event_id": str(event.id),
            "log_origin": broker.log_origin,
            "max_merge_delay_ms": MAX_MERGE_DELAY_MS,
        },
        broker.receipt,
        env.TYP_RECEIPT,
    )
    injected: list[int] = []

    def rewrite(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path != "/v1/inbox" or injected:
            return None
        injected.append(first.seq + 1000)
        page = {
            "items": [
                {
                    "seq": injected[0],
                    "mid": mid,
                    "sender": "VN-GDC",
                    "kind": "alert",
                    "envelope": again,
                    "receipt": receipt,
                    "envelope_sha256": digest,
                    "received_at": event.created_at.isoformat(),
                    "log_index": index,
                }
            ],
            "next_cursor": str(injected[0]),
            "more": False,
        }
        return httpx2.Response(200, json=page)

    transport = Hostile(rewrite)
    transport.fake_acks.add(digest)
    (got,) = _pull(s, transport)
    assert (got.mid, got.status, got.reason) == (mid, "rejected", "replay")
    assert got.folder == first.folder / "reused" / digest
    assert (got.folder / "inner.jws").exists()  # opened: it verified and decrypted
    assert not (got.folder / "alert.json").exists()
    assert (first.folder / "alert.json").read_text() == original
    assert json.loads((first.folder / "result.json").read_text())["status"] == "decrypted"
    assert [(a["status"], a.get("reason"), a["envelope_sha256"]) for a in transport.acks] == [
        ("rejected", "replay", digest)
    ]


def test_another_mid_on_a_delivered_envelope_is_not_a_duplicate(
    agency_side: dict[str, Any],
) -> None:
    """A new envelope served under a (sender, mid) already settled is checked, not acked blind."""
    s = agency_side
    mid = send_alert(s)
    assert [r.status for r in _pull(s)] == ["decrypted"]
    other = send_alert(s)
    seen: list[str] = []

    def reuse(item: dict[str, Any]) -> None:
        seen.append(item["mid"])
        item["mid"] = mid

    transport = Hostile(_items(reuse))
    (got,) = _pull(s, transport)
    assert seen == [other]
    assert (got.mid, got.status, got.reason) == (mid, "rejected", "log_proof_failed")
    assert got.detail is not None
    assert "receipt" in got.detail


@pytest.mark.parametrize("field", ["sender", "mid"])
def test_a_path_in_sender_or_mid_writes_nothing_outside_the_state_folder(
    agency_side: dict[str, Any], field: str
) -> None:
    s = agency_side
    send_alert(s)
    before = sorted(p for p in Path(s["tmp"]).rglob("*") if "inbox" not in p.parts)

    def escape(item: dict[str, Any]) -> None:
        item[field] = "../../../escaped" if field == "sender" else "../../escaped"

    (got,) = _pull(s, Hostile(_items(escape)))
    assert (got.status, got.reason, got.folder) == ("rejected", "other", None)
    after = sorted(p for p in Path(s["tmp"]).rglob("*") if "inbox" not in p.parts)
    assert after == before
    assert not list(Path(s["tmp"]).parent.rglob("escaped"))
    assert not (s["tmp"] / "inbox" / "alerts").exists()


def test_inbox_pull_checks_with_the_pinned_log_key(agency_side: dict[str, Any]) -> None:
    from tests.sdk.test_officer import pull

    s = agency_side
    broker = keyring.load_or_create()
    other = note.format_verifier_key(
        broker.log_origin, keys.SigningKey.generate().private_key.public_key()
    )
    first = send_alert(s)
    bad = pull(s, "--log-key", "not a key")
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --log-key: ")
    assert len(bad.output.strip().splitlines()) == 1
    # Another key than the broker's: no checkpoint verifies, so nothing is proven.
    refused = pull(s, "--log-key", other)
    assert refused.exit_code == 0, refused.output
    (row,) = json.loads(refused.output)
    assert (row["mid"], row["status"], row["reason"]) == (first, "rejected", "log_proof_failed")
    assert "bad_checkpoint" in row["detail"]
    # No key given: the broker's is trusted on first use and pinned beside the cursor.
    second = send_alert(s)
    trusted = pull(s)
    assert [(r["mid"], r["status"]) for r in json.loads(trusted.output)] == [(second, "decrypted")]
    pinned = s["tmp"] / "inbox" / "log" / "key"
    assert pinned.read_text().strip() == broker.log_verifier_key
    # The checkpoint kept under that key does not verify under another: an operator's error.
    send_alert(s)
    stopped = pull(s, "--log-key", other)
    assert stopped.exit_code == 2
    assert stopped.output.startswith("error: --log-key/--state: ")
    assert len(stopped.output.strip().splitlines()) == 1


def test_a_message_not_yet_logged_waits_then_is_refused_past_the_promise(
    agency_side: dict[str, Any],
) -> None:
    s = agency_side
    mid = send_alert(s)

    def unlogged(item: dict[str, Any]) -> None:
        item["log_index"] = None

    # Within the receipt's promise (plus a little): left in the inbox for the next pull.
    assert _pull(s, Hostile(_items(unlogged))) == []
    assert not (s["tmp"] / "inbox" / "cursor").exists()
    broker = keyring.load_or_create()

    def long_unlogged(item: dict[str, Any]) -> None:
        receipt = _payload(item["receipt"])
        receipt["accepted_at"] -= 120_000  # promised 1 s after, two minutes ago
        item["receipt"] = env.sign_compact(receipt, broker.receipt, env.TYP_RECEIPT)
        item["log_index"] = None

    transport = Hostile(_items(long_unlogged))
    (got,) = _pull(s, transport)
    assert (got.mid, got.status, got.reason) == (mid, "rejected", "log_proof_failed")
    assert got.detail is not None
    assert "not in the log" in got.detail
    assert [(a["status"], a.get("reason")) for a in transport.acks] == [
        ("rejected", "log_proof_failed")
    ]


def test_an_older_checkpoint_keeps_the_newer_one_and_waits(agency_side: dict[str, Any]) -> None:
    """A lagging replica: an older checkpoint, consistent with the kept one, replaces nothing,
    and a message neither proves is left in the inbox rather than refused."""
    s = agency_side
    send_alert(s)
    assert [r.status for r in _pull(s)] == ["decrypted"]
    older = json.loads((s["tmp"] / "inbox" / "log" / "checkpoint.json").read_text())["checkpoint"]
    send_alert(s)
    assert [r.status for r in _pull(s)] == ["decrypted"]
    kept = _kept(s)
    mid = send_alert(s)

    def lagging(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path != "/v1/log/checkpoint":
            return None
        return httpx2.Response(200, text=older, headers={"content-type": "text/plain"})

    assert _pull(s, Hostile(lagging)) == []
    assert _kept(s) == kept
    assert [(r.mid, r.status) for r in _pull(s)] == [(mid, "decrypted")]
