"""Evidence of receipt: verify the recipients' signed acknowledgements of a message we sent.

The message status (`GET /v1/messages/{mid}`) carries each recipient's acknowledgement exactly
as the recipient signed it. The broker is not trusted for any of it: each acknowledgement is
checked here against the directory (a signing key of the recipient agency), against our own
record of what we sent (the mid and the envelope hash our verified receipt holds), and the key
must have been valid when the transparency log recorded the acknowledgement.

That time is the `ts` of the acknowledgement's `msg.acked` leaf, proven by an inclusion proof
against a checkpoint signed by the pinned log key (`log_key`). Without a pinned key, or before
the sequencer has given the acknowledgement a leaf, the broker's recorded `acked_at` is used
instead and the result says so (`time_source="broker"`): the signature and the payload are
still checked, but the time is the broker's word.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from broker.crypto import envelope as env
from broker.crypto import keys
from broker.crypto.errors import CryptoError
from broker.sdk.client import BrokerAPIError, BrokerClient


class EvidenceError(Exception):
    """An acknowledgement does not prove receipt; the message says why."""


@dataclass
class AckEvidence:
    """What the verification of one recipient's acknowledgement established."""

    recipient: str
    ack: str | None
    verified: bool = False
    status: str | None = None
    reason: str | None = None
    kid: str | None = None
    # Where the time the key was checked at came from: the proven log leaf, or the broker.
    time_source: Literal["log", "broker"] | None = None
    checked_at: int | None = None  # epoch seconds
    log_index: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the token itself (it is kept in its own file)."""
        return {
            "recipient": self.recipient,
            "verified": self.verified,
            "status": self.status,
            "reason": self.reason,
            "kid": self.kid,
            "time_source": self.time_source,
            "checked_at": self.checked_at,
            "log_index": self.log_index,
            "problem": self.problem,
            "notes": self.notes,
        }


def verify_ack(
    ack: str,
    *,
    recipient: str,
    mid: str,
    envelope_sha256: str,
    directory: list[dict[str, Any]],
    at: int,
) -> dict[str, Any]:
    """The payload of `ack` if a signing key of `recipient` valid at `at` signed it for our
    message (`mid`, `envelope_sha256`); else `EvidenceError`.

    `directory` is the recipient's keys as `BrokerClient.jwks(recipient)` lists them.
    """
    payload, key = _signed_payload(ack, recipient, mid, envelope_sha256, directory)
    _valid_at(key, at)
    return payload


def _signed_payload(
    ack: str, recipient: str, mid: str, envelope_sha256: str, directory: list[dict[str, Any]]
) -> tuple[dict[str, Any], keys.PublicJWK]:
    """The payload and key of `ack` if a key of `recipient` signed it for our message."""
    from broker import schemas

    try:
        kid = env.compact_kid(ack, env.TYP_ACK)
    except CryptoError as exc:
        raise EvidenceError(f"not an ack+jws ({exc.code}: {exc.detail})") from None
    entry = next((k for k in directory if k.get("kid") == kid), None)
    if entry is None or entry.get("agency") != recipient or entry.get("use") != "sig":
        raise EvidenceError(f"signed with key {kid}, which is not a signing key of {recipient}")
    try:
        key = keys.parse_public_jwk(entry, use="sig")
        payload = env.verify_compact(ack, key, env.TYP_ACK)
    except CryptoError as exc:
        raise EvidenceError(f"{exc.code}: {exc.detail}") from None
    try:
        schemas.validate("ack", payload)
    except schemas.SchemaError as exc:
        raise EvidenceError(f"the payload is not an acknowledgement: {exc}") from None
    if payload["mid"] != mid:
        raise EvidenceError(f"it acknowledges {payload['mid']}, not {mid}")
    if payload["envelope_sha256"] != envelope_sha256:
        raise EvidenceError("it acknowledges another envelope than the one we sent")
    return payload, key


def _valid_at(key: keys.PublicJWK, at: int) -> None:
    try:
        keys.check_valid_at(key, at)
    except CryptoError as exc:
        raise EvidenceError(f"{exc.code}: {exc.detail}") from None


def logged_time(
    client: BrokerClient,
    log_key: str,
    index: int,
    leaf: str,
    *,
    ack: str,
    mid: str,
    sender: str,
    recipient: str,
) -> int:
    """Epoch ms at which the log recorded `ack` in leaf `index` (base64 `leaf`, as the status
    carries it), proven against a checkpoint signed by the pinned `log_key`; else
    `EvidenceError`."""
    from broker.audit import verify
    from broker.crypto import merkle

    try:
        checkpoint = verify.check_checkpoint(
            str(client.get("/v1/log/checkpoint")), verify.parse_key(log_key)
        )
    except verify.VerifyError as exc:
        raise EvidenceError(f"log {exc.code}: {exc}") from None
    if not 0 <= index < checkpoint.size:
        raise EvidenceError(
            f"the log's checkpoint (size {checkpoint.size}) has no leaf {index} yet"
        )
    proof = client.get("/v1/log/proof/inclusion", index=index, size=checkpoint.size)
    try:
        data = base64.b64decode(leaf, validate=True)
        hashes = [base64.b64decode(h, validate=True) for h in proof["proof"]]
        merkle.verify_inclusion(
            merkle.leaf_hash(data), index, checkpoint.size, hashes, checkpoint.root_hash
        )
        doc = json.loads(data)
    except (binascii.Error, KeyError, TypeError, ValueError) as exc:
        raise EvidenceError(f"leaf {index} is not proven in the signed log: {exc}") from None
    expected = {
        "kind": "msg.acked",
        "mid": mid,
        "sender": sender,
        "recipient": recipient,
        "ack_sha256": keys.sha256_b64u(ack.encode()),
    }
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in expected.items()):
        raise EvidenceError(f"leaf {index} does not record this acknowledgement")
    ts = doc.get("ts")
    if not isinstance(ts, int):
        raise EvidenceError(f"leaf {index} has no time")
    return ts


def ack_evidence(
    client: BrokerClient,
    status: dict[str, Any],
    *,
    envelope_sha256: str,
    log_key: str | None = None,
) -> list[AckEvidence]:
    """Verify every recipient's acknowledgement in a message status.

    `envelope_sha256` is our own record of what we sent (the receipt `broker send` kept), not
    the status's; `log_key` is the log's verifier key, pinned out of band.
    """
    mid, sender = str(status["mid"]), str(status["sender"])
    results = []
    for delivery in status.get("deliveries", []):
        recipient = str(delivery["recipient"])
        result = AckEvidence(
            recipient, delivery.get("ack"), log_index=delivery.get("ack_log_index")
        )
        results.append(result)
        if result.ack is None:
            result.problem = "no acknowledgement yet"
            continue
        try:
            # The signature and payload first, then the key at the time the log recorded it.
            payload, key = _signed_payload(
                result.ack, recipient, mid, envelope_sha256, client.jwks(recipient)
            )
            _valid_at(key, _key_time(client, result, delivery, log_key, mid=mid, sender=sender))
        except (EvidenceError, BrokerAPIError) as exc:
            result.problem = str(exc)
            continue
        result.verified = True
        result.status, result.reason = payload["status"], payload.get("reason")
        result.kid = env.compact_kid(result.ack, env.TYP_ACK)
    return results


def _key_time(
    client: BrokerClient,
    result: AckEvidence,
    delivery: dict[str, Any],
    log_key: str | None,
    *,
    mid: str,
    sender: str,
) -> int:
    """Epoch seconds to check the key at: the proven log time, else the broker's (noted)."""
    assert result.ack is not None
    index, leaf = delivery.get("ack_log_index"), delivery.get("ack_leaf")
    if log_key and index is not None and leaf is not None:
        ms = logged_time(
            client,
            log_key,
            index,
            leaf,
            ack=result.ack,
            mid=mid,
            sender=sender,
            recipient=result.recipient,
        )
        result.time_source, result.checked_at = "log", ms // 1000
        return ms // 1000
    missing = "no pinned log key (--log-key)" if not log_key else "the log has not recorded it yet"
    result.notes.append(f"key checked at the broker's recorded time: {missing}")
    recorded = delivery.get("acked_at")
    at = int(datetime.fromisoformat(recorded).timestamp()) if recorded else int(time.time())
    result.time_source, result.checked_at = "broker", at
    return at
