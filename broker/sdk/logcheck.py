"""The recipient's log check (PROTOCOL 4.5 step 2): receipt, checkpoint, consistency, inclusion.

`LogWitness.prove(item)` checks, for one inbox item, that the broker's signed receipt and its
transparency log both say this exact envelope was accepted, and returns the leaf: the time the
log gives the message (`ts`) is the time at which the sender's key must have been valid, never
the inbox's `received_at`. The Merkle and checkpoint checks are `broker.audit.verify`'s (the
auditor's), driven over the agency's own `BrokerClient`; only the I/O adapter is here.

The latest checkpoint the witness accepted is kept in `<state>/log/checkpoint.json` (the same
file format as `broker audit verify --state`); each new one must be consistent with it, so a
broker that shows this agency a fork (two roots for one size, or a tree that does not extend
the kept one) is caught. The log key is the agency's pinned one (`log_key`); without one, the
broker's key is trusted on first use and pinned in `<state>/log/key`, so a later change of key
is caught too (say so to your users: pin the key from the agreement annex instead). A rotation
of the log key is followed only through the statement the pinned key signed over its successor
(`verify.LogKeys`): each key verifies the tree sizes it signed, never an unsigned switch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from broker import ids
from broker.audit import verify
from broker.audit.verify import Read, Steps, VerifyError
from broker.crypto import envelope as env
from broker.crypto import keys, note
from broker.crypto.errors import CryptoError
from broker.sdk.client import BrokerAPIError, BrokerClient

# The schemas' agency-id and uuid patterns (defs.json): what may name a folder of evidence.
AGENCY_ID = re.compile(ids.AGENCY_ID)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# Past the receipt's promised merge delay plus this, a message still without a leaf is refused.
GRACE_MS = 60_000


def safe_ids(sender: Any, mid: Any) -> bool:
    """Whether `sender` and `mid` have the schemas' formats (so they can name a folder)."""
    return (
        isinstance(sender, str)
        and isinstance(mid, str)
        and AGENCY_ID.fullmatch(sender) is not None
        and UUID.fullmatch(mid) is not None
    )


class LogProofFailed(Exception):
    """The receipt or the log does not prove this envelope was accepted (ack `log_proof_failed`)."""


class NotYetLogged(Exception):
    """The message has no leaf yet, within the receipt's promised merge delay: ask again later."""

    def __init__(self, due_ms: int) -> None:
        super().__init__(f"not yet in the log; promised by {due_ms}")
        self.due_ms = due_ms


class LogStateError(Exception):
    """The kept checkpoint or pinned key cannot be used (an operator's problem, not the sender's)."""


@dataclass(frozen=True)
class ProvenLeaf:
    """A `msg.accepted` leaf proven included in a checkpoint consistent with the kept ones."""

    index: int
    ts_ms: int
    leaf: dict[str, Any]
    leaf_bytes: bytes
    checkpoint: str
    receipt: dict[str, Any]

    def evidence(self) -> dict[str, Any]:
        """What to keep beside the envelope: leaf bytes, its index and the checkpoint."""
        return {
            "index": self.index,
            "leaf": base64.b64encode(self.leaf_bytes).decode(),
            "checkpoint": self.checkpoint,
        }


class _Source:
    """The log's answers over the agency's `BrokerClient`, as `verify`'s steps read them.

    A refusal (4xx) is a `VerifyError`: the broker will not prove what it claims. A transport
    error, 429 or 5xx is raised as it is, so the puller retries later instead of refusing.
    """

    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self.leaf_pages: dict[tuple[int, int], dict[str, Any]] = {}

    def _get(self, path: str, **params: Any) -> Any:
        try:
            return self.client.get(path, **params)
        except BrokerAPIError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise
            raise VerifyError("http", f"GET {path} answered {exc}") from None

    def checkpoint(self) -> str:
        text = self._get("/v1/log/checkpoint")
        if not isinstance(text, str):
            raise VerifyError("bad_checkpoint", "the checkpoint is not text")
        return text

    def checkpoint_at(self, size: int) -> str:
        text = self._get("/v1/log/checkpoint", size=size)
        if not isinstance(text, str):
            raise VerifyError("bad_checkpoint", "the checkpoint is not text")
        return text

    def key_history(self) -> dict[str, Any]:
        return _doc(self._get("/v1/log/key", format="json"))

    def inclusion(self, index: int, size: int) -> dict[str, Any]:
        return _doc(self._get("/v1/log/proof/inclusion", index=index, size=size))

    def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        return _doc(self._get("/v1/log/proof/consistency", **{"from": size1, "to": size2}))

    def leaves(self, start: int, end: int) -> dict[str, Any]:
        if (start, end) not in self.leaf_pages:
            self.leaf_pages[start, end] = _doc(self._get("/v1/log/leaves", start=start, end=end))
        return self.leaf_pages[start, end]


def _doc(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise VerifyError("bad_proof", "the broker's answer is not a JSON object")
    return value


def _steps(
    verifier: verify.LogKeys, kept: note.Checkpoint | None, index: int
) -> Steps[tuple[note.Checkpoint, str, str]]:
    """Checkpoint, consistency with the kept one, inclusion of `index` (the auditor's steps).

    Returns the checkpoint that proves inclusion, the served note, and how the served one
    relates to the kept one (`verify._consistent`). A served checkpoint older than the kept
    one (a lagging replica), once proven consistent, leaves the kept one in place, and
    inclusion is proven against the kept one.
    """
    text = yield Read("checkpoint")
    served = yield from verify.check_following(text, verifier)
    relation = "first" if kept is None else (yield from verify._consistent(kept, served))
    head = kept if relation == "behind" and kept is not None else served
    if relation == "behind" and index >= head.size:
        return head, text, "pending"  # neither proves it yet: as a leaf not yet merged
    yield from verify._verify_inclusion(head, index)
    return head, text, relation


class LogWitness:
    """One agency's view of the broker's log, kept in `state/log/`."""

    def __init__(self, client: BrokerClient, state: Path, log_key: str | None = None) -> None:
        self.client = client
        self.folder = state / "log"
        self.log_key = log_key.strip() if log_key else None

    @property
    def checkpoint_file(self) -> Path:
        return self.folder / "checkpoint.json"

    @cached_property
    def _broker(self) -> dict[str, Any]:
        broker: dict[str, Any] = self.client.get("/v1/directory/broker")
        return broker

    @cached_property
    def verifier(self) -> verify.LogKeys:
        """The pinned log key (the configured one, else the one pinned on first use) and the
        keys its rotations handed over to, once followed."""
        pin = self.folder / "key"
        key = self.log_key
        if key is None:
            if not pin.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                pin.write_text(str(self._broker["log_key"]).strip() + "\n")
            key = pin.read_text().strip()
        try:
            return verify.LogKeys(verify.parse_key(key))
        except VerifyError as exc:
            raise LogStateError(str(exc)) from None

    def _kept(self, source: _Source) -> note.Checkpoint | None:
        try:
            try:
                return verify._load_state(self.checkpoint_file, self.verifier)
            except VerifyError:
                # Kept under a key a rotation handed over to: follow the rotations, then again.
                asyncio.run(verify._drive(self.verifier.follow(), cast(verify.LogSource, source)))
                return verify._load_state(self.checkpoint_file, self.verifier)
        except VerifyError as exc:
            raise LogStateError(
                f"{exc} (a checkpoint kept under another log key? move {self.folder} aside "
                "only if the new key is the one your agreement names)"
            ) from None

    def receipt(self, item: dict[str, Any], digest: str) -> dict[str, Any]:
        """The broker's receipt for this item, signed by its receipt key, naming this envelope."""
        try:
            payload = env.verify_compact(
                item["receipt"], receipt_key(self._broker, item["receipt"]), env.TYP_RECEIPT
            )
        except (CryptoError, KeyError, TypeError) as exc:
            raise LogProofFailed(f"the broker's receipt does not verify: {exc}") from None
        if not isinstance(payload, dict):
            raise LogProofFailed("the broker's receipt is not an object")
        for name, want in (("mid", item["mid"]), ("sender", item["sender"])):
            if payload.get(name) != want:
                raise LogProofFailed(f"the receipt names {name} {payload.get(name)!r}, not {want}")
        if payload.get("envelope_sha256") != digest:
            raise LogProofFailed("the receipt is for another envelope")
        return payload

    def prove(self, item: dict[str, Any]) -> ProvenLeaf:
        """Receipt, checkpoint, consistency and inclusion for one inbox item (PROTOCOL 4.5.2).

        Raises `LogProofFailed` (refuse the message), `NotYetLogged` (no leaf yet, within the
        promised delay), `LogStateError`, or the client's transport/5xx errors (retry later).
        """
        digest = keys.sha256_b64u(item["envelope"].encode())
        receipt = self.receipt(item, digest)
        index = item.get("log_index")
        due = _int(receipt.get("accepted_at")) + _int(receipt.get("max_merge_delay_ms"))
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            if index is None:
                raise NotYetLogged(due)
            raise LogProofFailed(f"log_index {index!r} is not a leaf index")
        source = _Source(self.client)
        kept = self._kept(source)
        try:
            # `_drive` awaits only what is awaitable: our plain calls are answered as they are.
            head, text, relation = asyncio.run(
                verify._drive(_steps(self.verifier, kept, index), cast(verify.LogSource, source))
            )
        except VerifyError as exc:
            raise LogProofFailed(f"{exc.code}: {exc}") from None
        if relation == "pending":
            raise NotYetLogged(due)
        if relation in ("first", "extended"):
            verify._save_state(self.checkpoint_file, text)
        elif relation == "behind":  # inclusion was proven against the kept checkpoint
            text = json.loads(self.checkpoint_file.read_text())["checkpoint"]
        data, doc = self._leaf(source, index)
        self._check_leaf(doc, item, receipt, head, index, digest)
        return ProvenLeaf(index, doc["ts"], doc, data, text, receipt)

    def _leaf(self, source: _Source, index: int) -> tuple[bytes, dict[str, Any]]:
        # `_verify_inclusion` read this page and compared its bytes with the proven leaf hash.
        page = source.leaf_pages.get((index, index + 1)) or {}
        found = [e for e in page.get("leaves") or [] if e.get("index") == index]
        if not found:
            raise LogProofFailed(f"the broker does not show us leaf {index}, which names us")
        try:
            data = base64.b64decode(found[0]["leaf"], validate=True)
            doc = json.loads(data)
        except (binascii.Error, ValueError, TypeError, KeyError):
            raise LogProofFailed(f"leaf {index} is not base64 JSON") from None
        if not isinstance(doc, dict):
            raise LogProofFailed(f"leaf {index} is not an object")
        return data, doc

    @staticmethod
    def _check_leaf(
        doc: dict[str, Any],
        item: dict[str, Any],
        receipt: dict[str, Any],
        head: note.Checkpoint,
        index: int,
        digest: str,
    ) -> None:
        expected = {
            "kind": "msg.accepted",
            "index": index,
            "mid": item["mid"],
            "sender": item["sender"],
            "envelope_sha256": digest,
            "ts": receipt.get("accepted_at"),
        }
        for name, want in expected.items():
            if doc.get(name) != want:
                raise LogProofFailed(f"leaf {index} has {name} {doc.get(name)!r}, not {want!r}")
        if not isinstance(doc["ts"], int) or isinstance(doc["ts"], bool):
            raise LogProofFailed(f"leaf {index} has no integer time")
        if receipt.get("log_origin") != head.origin:
            raise LogProofFailed(
                f"the receipt promises log {receipt.get('log_origin')!r}, not {head.origin!r}"
            )


RECEIPT_KEY_METADATA = frozenset({"status", "valid_from", "valid_until"})


def receipt_key(broker: dict[str, Any], token: str) -> dict[str, Any]:
    """The broker's receipt key that signed `token` (by its `kid`): the current one, or a
    retired one `GET /v1/directory/broker` still lists, so receipts from before a rotation
    verify."""
    try:
        kid = json.loads(keys.b64u_decode(token.split(".")[0])).get("kid")
    except (ValueError, AttributeError, CryptoError):
        kid = None
    for jwk in broker.get("receipt_keys") or []:
        try:
            if isinstance(jwk, dict) and kid is not None and keys.thumbprint(jwk) == kid:
                return {k: v for k, v in jwk.items() if k not in RECEIPT_KEY_METADATA}
        except CryptoError:
            continue
    current: dict[str, Any] = broker["receipt_key"]
    return current


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
