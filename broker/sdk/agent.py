"""What a focal point and a partner agency do: compose and send alerts; pull, open, verify, ack.

Everything here runs on the agency's side with the agency's own private keys (the keystore);
the broker only ever sees ciphertext and the signed routing header.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from uuid_utils.compat import uuid7

from broker import schemas
from broker.crypto import envelope as env
from broker.crypto import keys
from broker.crypto.errors import CryptoError
from broker.sdk import directory, logcheck
from broker.sdk.client import BrokerAPIError, BrokerClient
from broker.sdk.keystore import Keystore


class ScopeRefused(Exception):
    """The broker's dry run says the exchange is outside the agreement."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


class NoUsableKey(Exception):
    """A recipient has no active, unexpired, unrevoked encryption key in the directory."""


@dataclass(frozen=True)
class Draft:
    routing: dict[str, Any]
    envelope: str

    @property
    def mid(self) -> str:
        return str(self.routing["mid"])


class PageProgress:
    """Where the saved cursor may go as a page's items are settled, in the page's order.

    A page serves the urgent copies first, some of them from beyond its `next_cursor`
    (`ahead`: they come again, fetched, when the cursor reaches them). The cursor moves to
    the highest seq up to which every other item of the page is settled, and to
    `next_cursor` once they all are, so a crash in the middle of a page skips nothing.
    """

    def __init__(self, page: dict[str, Any]) -> None:
        self._waiting = sorted(i["seq"] for i in page["items"] if not i.get("ahead"))
        self._done: set[int] = set()
        self._cursor: str | None = None
        self._last = page.get("next_cursor")

    def settled(self, item: dict[str, Any]) -> str | None:
        """The cursor to save after `item` (None: not moved yet)."""
        self._done.add(item["seq"])
        while self._waiting and self._waiting[0] in self._done:
            self._cursor = str(self._waiting.pop(0))
        if not self._waiting and self._last is not None:
            self._cursor = str(self._last)
        return self._cursor


def recipient_keys(
    client: BrokerClient,
    recipients: list[str],
    now: int | None = None,
    *,
    broker_key: dict[str, Any] | None = None,
) -> dict[str, keys.PublicJWK]:
    """Each recipient's newest encryption key that is active and valid now (refuse the rest),
    from the broker-signed directory (PROTOCOL 6.2): verified with `broker_key`, pinned from
    the agreement annex, or else with the key the broker publishes, so that the keys are the
    ones the broker logged having shown."""
    now = int(time.time()) if now is None else now
    if broker_key is None:
        broker_key = client.get("/v1/directory/broker")["receipt_key"]
    listed = directory.verified_directory(client, broker_key, now=now)
    chosen: dict[str, keys.PublicJWK] = {}
    for agency in recipients:
        usable = [
            k
            for k in listed
            if k.get("agency") == agency
            and k.get("use") == "enc"
            and k.get("status") == "active"
            and k.get("nbf", 0) <= now < k.get("exp", 0)
        ]
        if not usable:
            raise NoUsableKey(f"{agency} has no usable encryption key in the directory")
        newest = max(usable, key=lambda k: k.get("nbf", 0))
        chosen[agency] = keys.parse_public_jwk(newest, use="enc")
    return chosen


# `audience` of an alert addressed to every member of its operation (`operation_members`).
MEMBERS = "members"


def operation_members(client: BrokerClient, operation: str, sender: str) -> list[str]:
    """The operation's current members but the sender, as the broker shows the sender its
    agreements; the broker checks them again against the membership at submission."""
    for view in client.agreements():
        for op in view.get("operations", []):
            if op["id"] == operation:
                return sorted(m for m in op["members"] if m != sender)
    raise ScopeRefused("scope.operation_unknown", f"{sender} is a member of no {operation!r}")


def declared_subject_types(body: dict[str, Any]) -> list[str]:
    """The subject types a body declares: an alert's subjects, feedback's seizures."""
    return sorted({s["type"] for s in [*body.get("subjects", []), *body.get("seizures", [])]})


def check_body(body: dict[str, Any], *, kind: str = "alert") -> None:
    """Validate a body on its own, before anything is asked of the broker (every bad field)."""
    schemas.validate_body({"kind": kind, "subject_types": declared_subject_types(body)}, body)


def routing_for(
    sender_fp: str,
    *,
    recipients: list[str],
    agreement: str,
    offence: str,
    body: dict[str, Any],
    subject_types: list[str] | None = None,
    operation: str | None = None,
    kind: str = "alert",
    priority: str = "routine",
    handling: str = "TLP:AMBER",
    ttl_s: int = 7 * 86400,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The routing header for a body, both validated against the schemas (every bad field)."""
    now = int(time.time())
    if subject_types is None:
        subject_types = declared_subject_types(body)
    routing: dict[str, Any] = {
        "v": 1,
        "kind": kind,
        "mid": str(uuid7()),
        "iat": now,
        "exp": now + ttl_s,
        "sender": sender_fp.split("/")[0],
        "sender_fp": sender_fp,
        "recipients": sorted(recipients),
        "agreement": agreement,
        "operation": operation,
        "offence": offence,
        "subject_types": sorted(subject_types),
        "priority": priority,
        "handling": handling,
        **({"audience": audience} if audience else {}),
        **(extra or {}),
    }
    schemas.validate_routing(routing)
    schemas.validate_body(routing, body)
    return routing


def compose(
    client: BrokerClient,
    signer: keys.SigningKey,
    *,
    sender_fp: str,
    body: dict[str, Any],
    dry_run_first: bool = True,
    **fields: Any,
) -> Draft:
    """Validate, dry-run the scope check, then sign, encrypt and sign (PROTOCOL 4.2).

    `fields` are those of `routing_for`. `dry_run_first=False` skips asking the broker first
    (the broker still decides on submit). With `audience=MEMBERS` the recipients are the
    operation's members now (`operation_members`), whatever `recipients` says.
    """
    if fields.get("audience") == MEMBERS:
        sender = sender_fp.split("/")[0]
        fields["recipients"] = operation_members(client, fields["operation"], sender)
    routing = routing_for(sender_fp, body=body, **fields)
    if dry_run_first:
        decision = client.check(routing)
        if decision["decision"] != "accept":
            raise ScopeRefused(
                decision.get("code") or "scope.refused", decision.get("detail") or ""
            )
    recipient_jwks = recipient_keys(client, routing["recipients"], routing["iat"])
    return Draft(routing, env.build_envelope(routing, body, signer, recipient_jwks))


def send(client: BrokerClient, draft: Draft) -> dict[str, Any]:
    """Submit with `Idempotency-Key: <mid>`; verify the broker's receipt before trusting it."""
    answer = client.submit(draft.envelope, draft.mid)
    broker = client.get("/v1/directory/broker")
    receipt = env.verify_compact(
        answer["receipt"], logcheck.receipt_key(broker, answer["receipt"]), env.TYP_RECEIPT
    )
    digest = keys.sha256_b64u(draft.envelope.encode())
    if receipt["mid"] != draft.mid or receipt["envelope_sha256"] != digest:
        raise CryptoError("the broker's receipt does not match what we sent")
    return answer


def recall_statement(
    sender_fp: str, *, mid: str, reason: str, legal_reference: str | None = None
) -> dict[str, Any]:
    """The payload of a `recall+jws`, validated against the "recall" schema (every bad field;
    `legal_reference` is required for `legal_order` and `erasure_request`)."""
    payload: dict[str, Any] = {
        "v": 1,
        "rid": str(uuid7()),
        "mid": mid,
        "sender": sender_fp.split("/")[0],
        "sender_fp": sender_fp,
        "reason": reason,
        **({"legal_reference": legal_reference} if legal_reference is not None else {}),
        "iat": int(time.time()),
    }
    schemas.validate("recall", payload)
    return payload


def recall(
    client: BrokerClient,
    signer: keys.SigningKey,
    *,
    sender_fp: str,
    mid: str,
    reason: str,
    legal_reference: str | None = None,
) -> dict[str, Any]:
    """Sign and post a recall of our message `mid` (docs/data-lifecycle.md, "Recall"); returns
    the broker's answer: each recipient `withdrawn` (never fetched) or `notified`, the deadline."""
    payload = recall_statement(sender_fp, mid=mid, reason=reason, legal_reference=legal_reference)
    return client.recall(mid, env.sign_compact(payload, signer, env.TYP_RECALL))


# Upper bounds in kg of the routing's quantity bands (vocab.QUANTITY_BANDS), smallest first.
_BANDS_KG = ((1, "lt_1kg"), (10, "1_10kg"), (100, "10_100kg"), (1000, "100_1000kg"))


def quantity_band(quantity: dict[str, Any] | None) -> str | None:
    """The feedback routing's `quantity_band` of a seizure's {value, unit} in kg or g, else
    None (a count of pieces or a volume has no weight band: give one explicitly, or none)."""
    if not quantity or quantity.get("unit") not in ("kg", "g"):
        return None
    kg = float(quantity["value"]) / (1000 if quantity["unit"] == "g" else 1)
    return next((band for limit, band in _BANDS_KG if kg < limit), "gt_1000kg")


_ACK_REASONS = {
    "envelope.bad_signature": "bad_signature",
    "envelope.not_addressed_to_us": "not_addressed_to_us",
    "envelope.decrypt_failed": "decrypt_failed",
    "envelope.kid_mismatch": "inner_mismatch",
    "envelope.routing_mismatch": "inner_mismatch",
    "envelope.iat_too_late": "replay",
}


def ack_reason(code: str) -> str:
    """The ack vocabulary's reason for one of our verification failures."""
    if code in _ACK_REASONS:
        return _ACK_REASONS[code]
    return "key_not_valid" if code.startswith("key.") else "other"


@dataclass
class Pulled:
    seq: int
    mid: str
    sender: str
    status: str  # decrypted | recalled | rejected | duplicate
    reason: str | None = None
    folder: Path | None = None
    detail: str | None = None  # why it was rejected, in words
    recalls: str | None = None  # a recall notice: the mid of the message it recalls


# An unsequenced message is waited for this long past its promised merge delay within one
# pull; it stays in the inbox for the next pull after that (refused past logcheck.GRACE_MS).
PENDING_WAIT_S = 2.0


@dataclass
class InboxPuller:
    """Follow the inbox cursor, check the log, open and verify every envelope, keep the
    evidence, acknowledge (PROTOCOL 4.5 and 7).

    Each item is proven first: the broker's receipt, its inclusion in a signed checkpoint and
    that checkpoint's consistency with the last one kept in `state/log/` (`logcheck`); a
    failure is acknowledged `rejected` with reason `log_proof_failed`. The sender's key must
    have been valid at the leaf's time. `log_key` is the log key pinned from the agreement
    annex; without it the broker's is pinned on first use (`logcheck.LogWitness`).

    The cursor is saved on disk after each item is settled. Items are deduplicated on
    (sender, mid) and the envelope's hash, after checking that sender and mid have the
    schemas' formats: a crash at any point resumes with no loss and no duplicate, and another
    envelope under a (sender, mid) already settled is opened and refused (`replay`).
    """

    client: BrokerClient
    keystore: Keystore
    agency: str
    state: Path
    ack_owner: str | None = None
    log_key: str | None = None
    _sender_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    _witness: logcheck.LogWitness | None = None

    @property
    def witness(self) -> logcheck.LogWitness:
        if self._witness is None:
            self._witness = logcheck.LogWitness(self.client, self.state, self.log_key)
        return self._witness

    @property
    def cursor_file(self) -> Path:
        return self.state / "cursor"

    def cursor(self) -> str | None:
        return self.cursor_file.read_text().strip() if self.cursor_file.exists() else None

    def _save_cursor(self, value: str | None) -> None:
        if value is None or value == self.cursor():
            return
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.cursor_file.with_suffix(".tmp")
        tmp.write_text(value)
        os.replace(tmp, self.cursor_file)

    def _sender_key(self, kid: str, sender: str) -> dict[str, Any]:
        if kid not in self._sender_keys:
            self._sender_keys.update({k["kid"]: k for k in self.client.jwks(sender)})
        if kid not in self._sender_keys:
            raise CryptoError(f"signing key {kid} is not in the directory")
        return self._sender_keys[kid]

    def pull(
        self, *, wait: float = 0, limit: int = 100, on_item: Callable[[Pulled], None] | None = None
    ) -> list[Pulled]:
        """Drain the inbox from the saved cursor; `wait` long-polls once when it is empty.

        A page with `more` true was cut (by `limit` or the broker's byte budget): the next is
        asked for at once; `more` false ends the drain. From a broker that sends no `more`,
        pages are asked for until one comes back empty. An item not yet in the log is waited
        for until its promised merge delay (plus `PENDING_WAIT_S`) has passed; then the drain
        stops before it, and the next pull takes it up.
        """
        results: list[Pulled] = []
        enc_keys = self.keystore.encryption_keys(self.agency)
        signer = self.keystore.signing_key(self.ack_owner or self.agency)
        first = True
        pending_until: float | None = None
        while True:
            page = self.client.inbox(self.cursor(), limit=limit, wait=wait if first else 0)
            first = False
            try:
                progress = PageProgress(page)
                for item in page["items"]:
                    result = self._settle(item, enc_keys, signer)
                    self._save_cursor(progress.settled(item))
                    results.append(result)
                    pending_until = None
                    if on_item:
                        on_item(result)
            except logcheck.NotYetLogged as exc:
                now = time.monotonic()
                if pending_until is None:
                    pending_until = now + max(0.0, exc.due_ms / 1000 - time.time())
                    pending_until += PENDING_WAIT_S
                if now >= pending_until:
                    return results
                time.sleep(0.1)
                continue
            if not page["items"] or page.get("more") is False:
                return results

    def _prove(
        self, item: dict[str, Any]
    ) -> tuple[logcheck.ProvenLeaf | None, tuple[str, str | None, str | None] | None]:
        """The item's leaf proven on the log, or the (status, reason, detail) of its refusal.
        Not yet on the log within its promised delay (and a grace): raised, to wait."""
        try:
            return self.witness.prove(item), None
        except logcheck.NotYetLogged as exc:
            if time.time() * 1000 <= exc.due_ms + logcheck.GRACE_MS:
                raise
            late = f"not in the log {logcheck.GRACE_MS // 1000} s after the promised delay"
            return None, ("rejected", "log_proof_failed", late)
        except logcheck.LogProofFailed as exc:
            return None, ("rejected", "log_proof_failed", str(exc))

    def _settle(
        self, item: dict[str, Any], enc_keys: list[keys.EncryptionKey], signer: keys.SigningKey
    ) -> Pulled:
        sender, mid = item.get("sender"), item.get("mid")
        if not logcheck.safe_ids(sender, mid):
            # Neither may name a folder nor an acknowledgement: refuse, writing nothing.
            return Pulled(
                item["seq"],
                str(mid),
                str(sender),
                "rejected",
                "other",
                detail="the item's sender or mid is not an agency id or a UUID",
            )
        sender, mid = str(sender), str(mid)
        digest = keys.sha256_b64u(item["envelope"].encode())
        if item.get("kind") == "recall":
            return self._settle_recall(item, digest, signer)
        folder = self.state / "alerts" / sender / mid
        done = folder / "result.json"
        reused = False
        if done.exists():
            previous = json.loads(done.read_text())
            if previous.get("envelope_sha256", _digest_of(folder / "outer.jws")) == digest:
                # Seen before a crash: acknowledge again (idempotent), keep one copy.
                self._ack(item, digest, signer, previous["status"], previous.get("reason"))
                return Pulled(item["seq"], mid, sender, "duplicate", previous.get("reason"), folder)
            # Another envelope under a settled (sender, mid): opened, kept apart, refused.
            reused, folder = True, folder / "reused" / digest
        proven, refusal = self._prove(item)
        status, reason, detail = refusal or ("decrypted", None, None)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "outer.jws").write_text(item["envelope"])
        (folder / "receipt.jws").write_text(item["receipt"])
        if proven is not None:
            (folder / "log.json").write_text(json.dumps(proven.evidence(), indent=2))
            status, reason, detail = self._open(item, proven, folder, enc_keys, write=not reused)
            if reused and status == "decrypted":
                status, reason = "rejected", "replay"
                detail = f"another envelope under {sender}/{mid} was settled before"
        refused = self._ack(item, digest, signer, status, reason)
        detail = "; ".join(d for d in (detail, refused) if d) or None
        result = {"status": status, "reason": reason, "seq": item["seq"], "envelope_sha256": digest}
        if detail:
            result["detail"] = detail
        (folder / "result.json").write_text(json.dumps(result))
        return Pulled(item["seq"], mid, sender, status, reason, folder, detail)

    def _open(
        self,
        item: dict[str, Any],
        proven: logcheck.ProvenLeaf,
        folder: Path,
        enc_keys: list[keys.EncryptionKey],
        *,
        write: bool,
    ) -> tuple[str, str | None, str | None]:
        """Verify and decrypt with the sender's key as it was at the leaf's time."""
        try:
            kid = env.parse_outer_header(item["envelope"])
            if proven.leaf.get("sender_kid") != kid:
                raise logcheck.LogProofFailed(f"the leaf names another signing key than {kid}")
            opened = env.open_envelope(
                item["envelope"],
                my_agency=self.agency,
                my_enc_keys=enc_keys,
                sender_sig_jwk=self._sender_key(kid, item["sender"]),
                at=proven.ts_ms // 1000,
            )
            if (opened.routing.get("sender"), opened.routing.get("mid")) != (
                item["sender"],
                item["mid"],
            ):
                raise logcheck.LogProofFailed("the envelope's routing names another sender or mid")
            try:
                schemas.validate_body(opened.routing, opened.body)
            except schemas.SchemaError as exc:
                raise _InvalidBody(str(exc)) from exc
            (folder / "inner.jws").write_text(opened.inner_jws)
            if write:
                self._link_correction(opened.routing, item["sender"], item["mid"])
                (folder / "alert.json").write_text(
                    json.dumps(
                        {"routing": opened.routing, "body": opened.body},
                        indent=2,
                        ensure_ascii=False,
                    )
                )
        except logcheck.LogProofFailed as exc:
            return "rejected", "log_proof_failed", str(exc)
        except _InvalidBody as exc:
            return "rejected", "invalid_body", str(exc)
        except CryptoError as exc:
            return "rejected", ack_reason(exc.code), str(exc)
        return "decrypted", None, None

    def _link_correction(self, routing: dict[str, Any], sender: str, mid: str) -> None:
        """A verified correction marks the earlier message we hold as superseded by it."""
        earlier = routing.get("supersedes")
        if not logcheck.safe_ids(sender, earlier):  # the schema made it a UUID; kept safe here
            return
        folder = self.state / "alerts" / sender / str(earlier)
        if folder.is_dir():
            (folder / "superseded_by").write_text(mid + "\n")

    # --- recall notices (docs/data-lifecycle.md, "Recall") -----------------------------------

    def _settle_recall(self, item: dict[str, Any], digest: str, signer: keys.SigningKey) -> Pulled:
        """A recall notice: proven in the log like any item, its statement verified with the
        sender focal point's key, then our copy of the message erased (a tombstone kept), our
        signed answer `erased` posted and the notice acknowledged `received`. A notice that does
        not verify, or names a message we do not hold, erases nothing and is refused.

        Its evidence is kept in `recalls/<sender>/<rid>/`; seen again (an urgent item served
        ahead, a restart), it is acknowledged again and an answer not yet taken is posted again.
        """
        sender, rid = str(item["sender"]), str(item["mid"])
        folder = self.state / "recalls" / sender / rid
        done = folder / "result.json"
        if done.exists():
            previous = json.loads(done.read_text())
            if previous.get("envelope_sha256") == digest:
                return self._recall_again(item, digest, signer, previous, folder)
            why = f"another statement under recall {rid} was settled before"
            told = self._ack(item, digest, signer, "rejected", "replay")
            said = "; ".join(d for d in (why, told) if d)
            return Pulled(item["seq"], rid, sender, "rejected", "replay", folder, said)
        statement: dict[str, Any] | None = None
        proven, refusal = self._prove(item)
        status, reason, detail = refusal or ("recalled", None, None)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notice.jws").write_text(item["envelope"])
        (folder / "receipt.jws").write_text(item["receipt"])
        if proven is not None:
            (folder / "log.json").write_text(json.dumps(proven.evidence(), indent=2))
            try:
                statement = self._verified_recall(item, proven)
                self._erase(statement, item["envelope"])
            except _RecallRefused as exc:
                status, reason, detail = "rejected", exc.reason, exc.detail
        answer = None if statement is None else self._comply(statement, signer)
        refused = self._ack(item, digest, signer, _ACK_OF[status], reason)
        detail = "; ".join(d for d in (detail, answer, refused) if d) or None
        result: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "seq": item["seq"],
            "envelope_sha256": digest,
        }
        if statement is not None:
            result |= {"recalls": statement["mid"], "complied": answer is None}
        if detail:
            result["detail"] = detail
        done.write_text(json.dumps(result))
        recalls = None if statement is None else str(statement["mid"])
        return Pulled(item["seq"], rid, sender, status, reason, folder, detail, recalls)

    def _recall_again(
        self,
        item: dict[str, Any],
        digest: str,
        signer: keys.SigningKey,
        previous: dict[str, Any],
        folder: Path,
    ) -> Pulled:
        """A notice settled before: acknowledged again (idempotent); an answer the broker did
        not take then is posted again."""
        status, reason = str(previous["status"]), previous.get("reason")
        if status == "recalled" and not previous.get("complied"):
            tombstone = self.state / "alerts" / str(item["sender"]) / str(previous["recalls"])
            statement = json.loads((tombstone / "recalled.json").read_text())
            if self._comply(statement, signer) is None:
                previous["complied"] = True
                (folder / "result.json").write_text(json.dumps(previous))
        self._ack(item, digest, signer, _ACK_OF[status], reason)
        recalls = previous.get("recalls")
        return Pulled(item["seq"], str(item["mid"]), str(item["sender"]), "duplicate", reason,
                      folder, recalls=recalls)  # fmt: skip

    def _verified_recall(self, item: dict[str, Any], proven: logcheck.ProvenLeaf) -> dict[str, Any]:
        """The notice's statement: a `recall+jws` signed by a focal point of the sender with a
        key valid at the log's time, naming this notice and a message of the sender we hold."""
        jws, sender = str(item["envelope"]), str(item["sender"])
        try:
            kid = env.compact_kid(jws, env.TYP_RECALL)
            if proven.leaf.get("sender_kid") != kid:
                raise _RecallRefused("log_proof_failed", f"the leaf names another key than {kid}")
            entry = self._sender_key(kid, sender)
            key = keys.parse_public_jwk(entry, use="sig")
            keys.check_valid_at(key, proven.ts_ms // 1000)
            statement = env.verify_compact(jws, key, env.TYP_RECALL)
        except CryptoError as exc:
            raise _RecallRefused(ack_reason(exc.code), str(exc)) from None
        try:
            schemas.validate("recall", statement)
        except schemas.SchemaError as exc:
            raise _RecallRefused("invalid_body", str(exc)) from None
        if (statement["sender"], statement["rid"]) != (sender, item["mid"]):
            raise _RecallRefused(
                "inner_mismatch",
                f"the statement is recall {statement['rid']} of {statement['sender']}, "
                f"served as {item['mid']} of {sender}",
            )
        if entry.get("focal_point") != statement["sender_fp"] or entry.get("agency") != sender:
            raise _RecallRefused(
                "bad_signature", f"key {kid} is not a signing key of {statement['sender_fp']}"
            )
        mid = statement["mid"]
        held = self.state / "alerts" / sender / str(mid)
        if not logcheck.safe_ids(sender, mid) or not (held / "result.json").exists():
            raise _RecallRefused("not_addressed_to_us", f"we hold no message {mid} of {sender}")
        return statement

    def _erase(self, statement: dict[str, Any], jws: str) -> None:
        """Erase our copy of the recalled message: the envelope and what it decrypted to. The
        tombstone (the statement, no content) is written first, so a crash in between erases
        the rest on the next pull."""
        folder = self.state / "alerts" / statement["sender"] / statement["mid"]
        # The statement's members (rid, mid, reason, legal_reference...) are no content.
        tombstone = {**statement, "recall": jws, "erased_at": int(time.time() * 1000)}
        kept = folder / "recalled.json"
        if not kept.exists():
            tmp = kept.with_suffix(".tmp")
            tmp.write_text(json.dumps(tombstone, indent=2))
            os.replace(tmp, kept)
        for name in ("outer.jws", "inner.jws", "alert.json"):
            (folder / name).unlink(missing_ok=True)
        # Other envelopes refused under the same mid were opened too (`reused/`).
        shutil.rmtree(folder / "reused", ignore_errors=True)

    def _comply(self, statement: dict[str, Any], signer: keys.SigningKey) -> str | None:
        """Post our signed answer `erased`; a refusal (other than 429/5xx, raised to retry) is
        returned in words, and the answer is posted again when the notice is seen again."""
        payload = {
            "v": 1,
            "rid": statement["rid"],
            "mid": statement["mid"],
            "status": "erased",
            "at": int(time.time() * 1000),
        }
        jws = env.sign_compact(payload, signer, env.TYP_RECALL_COMPLIANCE)
        try:
            self.client.comply(statement["mid"], jws)
        except BrokerAPIError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise
            return f"the broker refused our answer ({exc.code})"
        return None

    def _ack(
        self,
        item: dict[str, Any],
        digest: str,
        signer: keys.SigningKey,
        status: str,
        reason: str | None,
    ) -> str | None:
        """Post the signed acknowledgement of the envelope we hashed ourselves.

        A refusal of a `rejected` one (the broker does not know that envelope, say) is kept as
        the result's detail rather than stopping the inbox; any other is raised.
        """
        payload: dict[str, Any] = {
            "v": 1,
            "mid": item["mid"],
            "envelope_sha256": digest,
            "status": status,
            "at": int(time.time() * 1000),
        }
        if reason:
            payload["reason"] = reason
        try:
            self.client.ack(item["mid"], env.sign_compact(payload, signer, env.TYP_ACK))
        except BrokerAPIError as exc:
            if status != "rejected" or exc.status == 429 or exc.status >= 500:
                raise
            return f"the broker refused the acknowledgement ({exc.code})"
        return None

    def follow(
        self,
        *,
        wait: float = 20,
        limit: int = 100,
        stop: threading.Event | None = None,
        max_items: int | None = None,
        duration_s: float | None = None,
        on_item: Callable[[Pulled], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        backoff: Backoff | None = None,
    ) -> int:
        """Long-poll the inbox until `stop` is set, `max_items` are settled or `duration_s` has
        passed; returns how many items were settled.

        Transport errors and the broker's 429/503 answers are retried with exponential backoff
        and jitter, never sooner than the answer's `Retry-After`; any other refusal ends the
        loop (raised). Each item is settled (evidence, ack, result) and the cursor saved before
        the next; an interruption (KeyboardInterrupt) between two items loses nothing, and one
        while an item is being settled is held until it is (`interrupts_deferred`).
        """
        stop = stop or threading.Event()
        backoff = backoff or Backoff()
        enc_keys = self.keystore.encryption_keys(self.agency)
        signer = self.keystore.signing_key(self.ack_owner or self.agency)
        settled, failures = 0, 0
        more = False
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set():
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if not more and on_event:
                    on_event(f"waiting (cursor {self.cursor() or 'start'}, {settled} settled)")
                poll = 0 if more else min(wait, left)
                page = self.client.inbox(self.cursor(), limit=limit, wait=poll)
                progress = PageProgress(page)
                for item in page["items"]:
                    with interrupts_deferred():
                        result = self._settle(item, enc_keys, signer)
                        self._save_cursor(progress.settled(item))
                        settled += 1
                        if on_item:
                            on_item(result)
                    if (max_items is not None and settled >= max_items) or stop.is_set():
                        return settled
                failures = 0
                more = bool(page["items"]) and page.get("more") is not False
            except logcheck.NotYetLogged:
                # Its leaf is due within the receipt's merge delay: ask again shortly.
                if on_event:
                    on_event(f"waiting for the log to include the item after {self.cursor()}")
                more = True
                stop.wait(min(0.25, left))
            except (httpx2.TransportError, BrokerAPIError) as exc:
                if isinstance(exc, BrokerAPIError) and exc.status not in RETRIED_STATUSES:
                    raise
                failures += 1
                delay = backoff.delay(failures, getattr(exc, "retry_after", None))
                if on_event:
                    why = exc.code if isinstance(exc, BrokerAPIError) else type(exc).__name__
                    on_event(f"{why}: retry {failures} in {delay:.1f}s")
                more = False
                stop.wait(min(delay, left))
        return settled


RETRIED_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter (half to all of each step), at least the broker's
    `Retry-After`."""

    base_s: float = 1.0
    cap_s: float = 60.0
    max_retry_after_s: float = 600.0  # a larger Retry-After is taken as this

    def delay(self, failures: int, retry_after: int | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(failures - 1, 30))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.max_retry_after_s))
        return delay


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them (main thread only).

    Settling an item writes evidence, posts the ack and saves the cursor: stopped halfway, the
    item would be settled again on the next run (acknowledged twice, though harmlessly).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


class _InvalidBody(Exception):
    pass


class _RecallRefused(Exception):
    """A recall notice we refuse: `reason` from the ack vocabulary, `detail` in words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# The acknowledgement of a settled recall notice: taken (`received`), or refused.
_ACK_OF = {"recalled": "received", "rejected": "rejected"}


def _digest_of(path: Path) -> str | None:
    """SHA-256 of evidence kept before results recorded the envelope's hash."""
    return keys.sha256_b64u(path.read_bytes()) if path.exists() else None


def stored_alerts(state: Path) -> Iterator[dict[str, Any]]:
    """Alerts kept by `InboxPuller`, with their verification result."""
    for result in sorted((state / "alerts").glob("*/*/result.json")):
        folder = result.parent
        entry: dict[str, Any] = {
            "sender": folder.parent.name,
            "mid": folder.name,
            **json.loads(result.read_text()),
        }
        alert = folder / "alert.json"
        if alert.exists():
            entry["alert"] = json.loads(alert.read_text())
        correction = folder / "superseded_by"
        if correction.exists():
            entry["superseded_by"] = correction.read_text().strip()
        tombstone = folder / "recalled.json"
        if tombstone.exists():  # erased on its sender's recall: shown as recalled
            recalled = json.loads(tombstone.read_text())
            entry |= {"status": "recalled", "acked": entry.get("status")}
            entry["recall"] = {k: v for k, v in recalled.items() if k != "recall"}
        yield entry
