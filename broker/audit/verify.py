"""Independent verification of the broker's transparency log, online and from exports.

Needs only the broker's log verifier key, pinned out of band, and HTTP: it imports
`broker.crypto`, the pure `broker.audit.leaf` and `httpx2`, never the server stack. The checks
are written once, as steps that ask for the log's answers (`Read`) without doing any I/O: the
CLI answers them over HTTP (`verify_log`), the broker itself from its own store through an
async source (`verify_source`; `broker.audit.log.verify_stored`). Every check that fails raises
`VerifyError` with a stable `code`:

- ``bad_key``: the pinned key does not parse.
- ``bad_checkpoint``: the checkpoint's signature, origin or form is wrong.
- ``split_view``: the log showed two different trees (two roots for one size, or a newer
  checkpoint that does not extend the stored one). The message names both roots.
- ``bad_proof``: a served proof does not verify.
- ``leaves``: the leaves (full mode) are missing, out of order, altered, or do not reproduce the
  checkpoint's root.
- ``nodes``: a stored subtree hash (full mode) differs from the one the leaves imply.
- ``export``: an export does not verify (signature, proof, or an event differs from its leaf).
- ``state``: the stored (or given) earlier checkpoint does not read or verify.
- ``behind``: the broker serves an older checkpoint than the stored one and cannot prove that
  the two are consistent (a lagging replica, or a rollback).
- ``http``: the broker answered with an error (its store, when it verifies itself).
- ``witnesses``: fewer than the required number of pinned witnesses validly cosigned the
  checkpoint (or one of them has an invalid cosignature on it).
- ``bad_witness_key``: a pinned witness key does not parse.
- ``rotation``: a rotation of the log key the broker publishes does not verify (its statement
  is not signed by the key it retires, its leaf differs or is not in the old key's last
  checkpoint), or a checkpoint is signed by a retired key beyond the last size it signed.

Log key rotations (docs/protocol.md, "Rotating the broker's keys"): the verifier trusts the
pinned key, and a newer key only through a rotation the trusted key signed. `LogKeys` follows
the chain the broker publishes (`GET /v1/log/key?format=json`): each rotation's statement must verify
with the key it retires, and its leaf must be the last leaf of a checkpoint that key signed
(the handover checkpoint, size index + 1). Each key then verifies the sizes it signed: the old
one up to the handover checkpoint, the new one every later size.

With witnesses required (`--witnesses K`), the checkpoint verified is the latest one the broker
serves with at least K cosignatures (`GET /v1/log/checkpoint?cosigned=K`), and K distinct pinned
witness keys must each have a valid cosignature (C2SP tlog-cosignature) on it; the state and
consistency checks are the same.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import inspect
import io
import json
import os
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import httpx2

from broker.audit import leaf
from broker.crypto import envelope as env
from broker.crypto import keys as crypto_keys
from broker.crypto import merkle, note
from broker.crypto.errors import CryptoError
from broker.ids import whole_number

PAGE = 1000
ROTATION_TYP = "broker-key-rotation+jws"
MAX_RETRIES = 10
NODE_PAGE = 4096
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

T = TypeVar("T")


class VerifyError(Exception):
    """Verification failed; `code` says which check (see the module docstring)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class HttpClient(Protocol):
    """What the verifier needs from an HTTP client (httpx2.Client, or a test client)."""

    def get(self, url: str, *, params: Any = ..., headers: Any = ...) -> Any:
        """GET a path relative to the client's base URL."""
        ...


def open_http(base_url: str) -> httpx2.Client:
    """The HTTP client the CLI uses (tests replace this function)."""
    return httpx2.Client(base_url=base_url, timeout=60.0, follow_redirects=False)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: Any, what: str, code: str) -> bytes:
    if not isinstance(text, str):
        raise VerifyError(code, f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VerifyError(code, f"{what} is not valid base64") from None


class LogClient:
    """The broker's /v1/log API."""

    def __init__(self, http: HttpClient, token: str | None) -> None:
        self.http = http
        self.sleep = time.sleep
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        for attempt in range(MAX_RETRIES + 1):
            try:
                response = self.http.get(path, params=query, headers=self.headers)
            except httpx2.HTTPError as exc:
                raise VerifyError("http", f"GET {path}: {exc}") from None
            if response.status_code != 429 or attempt == MAX_RETRIES:
                break
            # Full verification of a large log outruns the per-principal rate limit: wait.
            seconds = whole_number(response.headers.get("retry-after", "1"))
            self.sleep(min(float(1 if seconds is None else seconds), 60.0))
        if response.status_code != 200:
            detail = response.text[:300]
            try:
                problem = response.json()
                detail = f"{problem.get('code')}: {problem.get('detail')}"
            except ValueError:
                pass
            raise VerifyError("http", f"GET {path} answered {response.status_code} ({detail})")
        return response

    def checkpoint(self) -> str:
        """The latest signed checkpoint note."""
        return str(self._get("/v1/log/checkpoint").text)

    def checkpoint_at(self, size: int) -> str:
        """The signed checkpoint of one tree size."""
        return str(self._get("/v1/log/checkpoint", size=size).text)

    def key_history(self) -> dict[str, Any]:
        """The log's keys and their rotations (`GET /v1/log/key?format=json`)."""
        response = self._get("/v1/log/key", format="json")
        doc: dict[str, Any] = response.json()
        return doc

    def cosigned_checkpoint(self, cosigned: int) -> str:
        """The latest signed checkpoint note with at least `cosigned` cosignatures."""
        return str(self._get("/v1/log/checkpoint", cosigned=cosigned).text)

    def inclusion(self, index: int, size: int) -> dict[str, Any]:
        """An inclusion proof in transparency-dev JSON."""
        doc: dict[str, Any] = self._get("/v1/log/proof/inclusion", index=index, size=size).json()
        return doc

    def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        """A consistency proof in transparency-dev JSON."""
        doc: dict[str, Any] = self._get(
            "/v1/log/proof/consistency", **{"from": size1, "to": size2}
        ).json()
        return doc

    def leaves(self, start: int, end: int) -> dict[str, Any]:
        """One page of leaves the token may read."""
        doc: dict[str, Any] = self._get("/v1/log/leaves", start=start, end=end, limit=PAGE).json()
        return doc

    def nodes(self, level: int, start: int, end: int) -> dict[str, Any]:
        """One page of stored subtree hashes."""
        doc: dict[str, Any] = self._get("/v1/log/nodes", level=level, start=start, end=end).json()
        return doc


class LogSource(Protocol):
    """The log's answers as `LogClient` gives them, from an async source (the broker's store)."""

    async def checkpoint(self) -> str:
        """The latest signed checkpoint note."""
        ...

    async def inclusion(self, index: int, size: int) -> dict[str, Any]:
        """An inclusion proof, as /v1/log/proof/inclusion answers."""
        ...

    async def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        """A consistency proof, as /v1/log/proof/consistency answers."""
        ...

    async def leaves(self, start: int, end: int) -> dict[str, Any]:
        """One page of leaves, as /v1/log/leaves answers."""
        ...

    async def nodes(self, level: int, start: int, end: int) -> dict[str, Any]:
        """One page of stored subtree hashes, as /v1/log/nodes answers."""
        ...


@dataclass(frozen=True)
class Read:
    """One answer a verification step needs: the `LogClient`/`LogSource` method and arguments."""

    # `cosigned_checkpoint` only with witnesses required (`LogClient`, `StoredLog`).
    # `checkpoint_at` and `key_history` only to follow log key rotations (`LogKeys`); a source
    # without them (the broker's own store) answers None: no rotations to follow.
    method: Literal[
        "checkpoint",
        "cosigned_checkpoint",
        "checkpoint_at",
        "key_history",
        "inclusion",
        "consistency",
        "leaves",
        "nodes",
    ]
    args: tuple[int, ...] = ()


# A verification step: yields the reads it needs, is sent their answers (or thrown the
# `VerifyError` a read raised), and returns its result.
Steps = Generator[Read, Any, T]


async def _drive(steps: Steps[T], source: LogClient | LogSource) -> T:
    """Answer the steps' reads from `source`: a partner's HTTP client or the broker's store."""
    answer: Any = None
    failed: VerifyError | None = None
    while True:
        try:
            read = steps.throw(failed) if failed is not None else steps.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result
        if read.method in ("checkpoint_at", "key_history") and not hasattr(source, read.method):
            answer, failed = None, None
            continue
        try:
            answer, failed = getattr(source, read.method)(*read.args), None
            if inspect.isawaitable(answer):
                answer = await answer
        except VerifyError as exc:
            answer, failed = None, exc


@dataclass
class Report:
    """What a verification established."""

    origin: str
    size: int
    root: bytes
    previous: tuple[int, bytes] | None = None
    relation: str = "first"
    leaves_checked: int = 0
    nodes_checked: int = 0
    included: list[int] = field(default_factory=list)
    cosigned_by: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the log keys, when rotations were followed

    def __str__(self) -> str:
        lines = [f"checkpoint {self.origin} size {self.size} root {_b64(self.root)}: signature OK"]
        if self.keys:
            lines.append(
                f"log key rotated {len(self.keys) - 1} time(s) since the pinned key, each "
                f"rotation signed by the key it retired; current key {self.keys[-1]}"
            )
        if self.cosigned_by:
            names = ", ".join(self.cosigned_by)
            lines.append(f"cosigned by {len(self.cosigned_by)} pinned witnesses: {names}")
        if self.previous is not None:
            size, root = self.previous
            lines.append(f"consistent with the stored checkpoint size {size} root {_b64(root)}")
            if self.relation == "behind":
                lines.append("the broker served an older checkpoint; the stored one is kept")
        else:
            lines.append("no stored checkpoint: trusting this one from now on")
        if self.leaves_checked:
            lines.append(
                f"full: {self.leaves_checked} leaves reproduce the root; "
                f"{self.nodes_checked} stored subtree hashes match"
            )
        lines += [f"leaf {i} is included" for i in self.included]
        return "\n".join(lines)


def parse_key(log_key: str) -> note.NoteVerifier:
    """The pinned verifier key, or `bad_key`."""
    try:
        return note.parse_verifier_key(log_key.strip())
    except note.NoteError as exc:
        raise VerifyError("bad_key", f"the pinned log key is invalid: {exc}") from None


def parse_witness_keys(vkeys: Sequence[str]) -> list[note.CosignerVerifier]:
    """The pinned witness keys (distinct), or `bad_witness_key`."""
    found: dict[tuple[str, bytes], note.CosignerVerifier] = {}
    for vkey in vkeys:
        try:
            key = note.parse_cosigner_vkey(vkey.strip())
        except note.NoteError as exc:
            raise VerifyError(
                "bad_witness_key", f"the pinned witness key {vkey.strip()!r} is invalid: {exc}"
            ) from None
        found.setdefault((key.name, key.key_id), key)
    return list(found.values())


def check_cosignatures(
    text: str, witnesses: Sequence[note.CosignerVerifier], required: int
) -> list[str]:
    """The names of the pinned witnesses that cosigned `text`; `witnesses` if fewer than
    `required` distinct ones did, or if a pinned witness's cosignature is invalid."""
    cosigned: list[str] = []
    missing: list[str] = []
    for key in witnesses:
        try:
            note.verify_cosignature(text, key)
        except note.NoteError as exc:
            if exc.code != "unverified":
                raise VerifyError(
                    "witnesses", f"the cosignature by pinned witness {key.name} fails: {exc}"
                ) from None
            missing.append(key.name)
            continue
        if key.name not in cosigned:
            cosigned.append(key.name)
    if len(cosigned) < required:
        raise VerifyError(
            "witnesses",
            f"{len(cosigned)} of the {required} required pinned witnesses cosigned the "
            f"checkpoint (cosigned: {', '.join(cosigned) or 'none'}; "
            f"not: {', '.join(missing) or 'none'})",
        )
    return cosigned


def check_checkpoint(text: str, verifier: note.NoteVerifier | LogKeys) -> note.Checkpoint:
    """A checkpoint signed by the pinned key (or the key a followed rotation made current for
    its size), for its origin, or `bad_checkpoint`."""
    if isinstance(verifier, LogKeys):
        return verifier.check(text)
    try:
        return note.verify_checkpoint(text, verifier)
    except note.NoteError as exc:
        raise VerifyError("bad_checkpoint", f"the checkpoint does not verify: {exc}") from None


# --- log key rotations -----------------------------------------------------------------------


def _jwk_of(verifier: note.NoteVerifier) -> dict[str, str]:
    raw = verifier.public_key.public_bytes_raw()
    x = crypto_keys.b64u_encode(raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "alg": "Ed25519"}


def _vkey(verifier: note.NoteVerifier) -> str:
    return note.format_verifier_key(verifier.name, verifier.public_key)


@dataclass(frozen=True)
class KeySpan:
    """A log key and the tree sizes it signs: `first` up to `last` (None: no end yet)."""

    verifier: note.NoteVerifier
    first: int
    last: int | None

    @property
    def vkey(self) -> str:
        return _vkey(self.verifier)


class LogKeys:
    """The log keys a verifier trusts: the pinned one and those its rotations handed over to.

    Until `follow` has run, the pinned key verifies every size.
    """

    def __init__(self, pinned: note.NoteVerifier) -> None:
        self.pinned = pinned
        self.spans: list[KeySpan] = [KeySpan(pinned, 0, None)]
        self.followed = False

    def for_size(self, size: int) -> KeySpan:
        """The span whose key signs checkpoints of `size`."""
        for span in self.spans:
            if span.first <= size and (span.last is None or size <= span.last):
                return span
        return self.spans[0] if size < self.spans[0].first else self.spans[-1]

    def check(self, text: str) -> note.Checkpoint:
        """`text` verified with the key that signs its size, or `bad_checkpoint`/`rotation`."""
        try:
            size = note.Checkpoint.parse(note._split_note(text)[0]).size
        except note.NoteError as exc:
            raise VerifyError("bad_checkpoint", f"the checkpoint does not verify: {exc}") from None
        span = self.for_size(size)
        try:
            return note.verify_checkpoint(text, span.verifier)
        except note.NoteError as exc:
            other = next(
                (s for s in self.spans if s is not span and _signed(text, s.verifier)), None
            )
            if other is not None:
                raise VerifyError(
                    "rotation",
                    f"the checkpoint of size {size} is signed by the log key {other.vkey}, "
                    f"which signs sizes {other.first} to {other.last or 'now'} only",
                ) from None
            raise VerifyError("bad_checkpoint", f"the checkpoint does not verify: {exc}") from None

    def follow(self) -> Steps[None]:
        """Follow the broker's published rotations from the pinned key (`rotation` if one
        of them does not verify); rotations before the pinned key are skipped."""
        doc = yield Read("key_history")
        self.followed = True
        if doc is None:
            return
        rotations = doc.get("rotations") if isinstance(doc, dict) else None
        if not isinstance(rotations, list):
            raise VerifyError("rotation", "GET /v1/log/key (JSON) has no list of rotations")
        spans: list[KeySpan] = []
        trusted, first = self.pinned, 0
        for item in sorted(
            (r for r in rotations if isinstance(r, dict)), key=lambda r: _int_or(r.get("index"))
        ):
            old_vkey = _peek(item.get("statement")).get("old_vkey")
            if old_vkey != _vkey(trusted):
                continue  # a rotation before the pinned key (or of another one): not ours
            new, index = yield from _check_rotation(item, trusted)
            spans.append(KeySpan(trusted, first, index + 1))
            trusted, first = new, index + 2
        self.spans = [*spans, KeySpan(trusted, first, None)]


def check_following(text: str, keys: LogKeys) -> Steps[note.Checkpoint]:
    """`text` verified with `keys`; when no known key verifies it, the broker's published
    rotations are followed first (again: a rotation may be newer than the last look)."""
    try:
        return keys.check(text)
    except VerifyError:
        pass
    yield from keys.follow()
    return keys.check(text)


def _int_or(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _signed(text: str, verifier: note.NoteVerifier) -> bool:
    try:
        note.verify_note(text, verifier)
    except note.NoteError:
        return False
    return True


def _peek(statement: Any) -> dict[str, Any]:
    """A statement's payload, not verified: only to find the rotation of the trusted key."""
    try:
        doc = json.loads(crypto_keys.b64u_decode(str(statement).split(".")[1]))
    except (IndexError, ValueError, CryptoError):
        return {}
    return doc if isinstance(doc, dict) else {}


def check_rotation_statement(statement: str, old_jwk: Mapping[str, Any]) -> dict[str, Any]:
    """A rotation statement's payload, verified with the key it retires, or `rotation`."""
    try:
        payload = env.verify_compact(statement, old_jwk, ROTATION_TYP)
    except CryptoError as exc:
        raise VerifyError(
            "rotation", f"the rotation statement is not signed by the retired key: {exc}"
        ) from None
    if payload.get("v") != 1 or payload.get("old_kid") != crypto_keys.thumbprint(old_jwk):
        raise VerifyError("rotation", "the rotation statement names another old key")
    new = payload.get("new_jwk")
    if not isinstance(new, dict) or payload.get("new_kid") != crypto_keys.thumbprint(new):
        raise VerifyError("rotation", "the rotation statement's new key does not match its kid")
    return payload


def _check_rotation(
    item: Mapping[str, Any], trusted: note.NoteVerifier
) -> Steps[tuple[note.NoteVerifier, int]]:
    """One log key rotation: statement by `trusted`, leaf identical, in `trusted`'s checkpoint."""
    index = item.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise VerifyError("rotation", f"a rotation has no leaf index ({index!r})")
    payload = check_rotation_statement(str(item.get("statement")), _jwk_of(trusted))
    if payload.get("key") != "log" or payload.get("old_vkey") != _vkey(trusted):
        raise VerifyError("rotation", f"the rotation at leaf {index} is not of the trusted log key")
    try:
        new = note.parse_verifier_key(str(payload.get("new_vkey")))
    except note.NoteError as exc:
        raise VerifyError("rotation", f"the rotation at leaf {index}: new key: {exc}") from None
    if new.name != trusted.name or _jwk_of(new)["x"] != payload["new_jwk"].get("x"):
        raise VerifyError("rotation", f"the rotation at leaf {index} names two different new keys")
    data = _unb64(item.get("leaf"), f"leaf {index}", "rotation")
    try:
        doc = json.loads(data)
    except ValueError:
        raise VerifyError("rotation", f"leaf {index} is not JSON") from None
    expected = {k: v for k, v in payload.items() if k != "v"} | {
        "kind": "log.key_rotated",
        "index": index,
        "statement": item.get("statement"),
    }
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in expected.items()):
        raise VerifyError("rotation", f"leaf {index} does not carry the rotation statement")
    # The handover checkpoint: the old key's last, its last leaf the rotation.
    text = yield Read("checkpoint_at", (index + 1,))
    try:
        handover = note.verify_checkpoint(text, trusted)
    except note.NoteError as exc:
        raise VerifyError(
            "rotation", f"checkpoint {index + 1} is not signed by the retiring key: {exc}"
        ) from None
    if handover.size != index + 1:
        raise VerifyError("rotation", f"the broker served size {handover.size}, not {index + 1}")
    proof = yield Read("inclusion", (index, index + 1))
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(data), index, index + 1, _hashes(proof, "proof"), handover.root_hash
        )
    except merkle.ProofError as exc:
        raise VerifyError(
            "rotation", f"leaf {index} is not in checkpoint {index + 1}: {exc}"
        ) from None
    return new, index


def _read_state(path: Path | None) -> str | None:
    if path is None or not path.exists():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerifyError("state", f"cannot read the state file {path}: {exc}") from None


def _check_stored(text: str, verifier: note.NoteVerifier | LogKeys, where: str) -> note.Checkpoint:
    try:
        return check_checkpoint(text, verifier)
    except VerifyError as exc:
        why = str(exc).removeprefix("the checkpoint does not verify: ")
        raise VerifyError("state", f"the {where} does not verify: {why}") from None


def _load_state(path: Path | None, verifier: note.NoteVerifier | LogKeys) -> note.Checkpoint | None:
    stored = _read_state(path)
    if stored is None:
        return None
    return _check_stored(stored, verifier, f"stored checkpoint in {path}")


def _save_state(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"checkpoint": text}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _split(old: note.Checkpoint, new: note.Checkpoint, why: str) -> VerifyError:
    return VerifyError(
        "split_view",
        f"split view: the stored checkpoint (size {old.size}, root {_b64(old.root_hash)}) and "
        f"the broker's (size {new.size}, root {_b64(new.root_hash)}) {why}",
    )


def _hashes(doc: Mapping[str, Any], key: str) -> list[bytes]:
    values = doc.get(key)
    if not isinstance(values, list):
        raise VerifyError("bad_proof", f"`{key}` is not a list")
    return [_unb64(v, key, "bad_proof") for v in values]


def _consistent(old: note.Checkpoint, new: note.Checkpoint) -> Steps[str]:
    """How `new` relates to `old`, after checking the consistency proof between them."""
    if old.size == new.size:
        if old.root_hash != new.root_hash:
            raise _split(old, new, "are different trees of the same size")
        return "same"
    small, large = (old, new) if old.size < new.size else (new, old)
    if small.size > 0:
        try:
            served = yield Read("consistency", (small.size, large.size))
        except VerifyError as exc:
            if new.size > old.size:
                raise
            raise VerifyError(
                "behind",
                f"the broker's checkpoint (size {new.size}) is older than the one verified before "
                f"(size {old.size}) and it cannot prove they are consistent ({exc}); retry later, "
                "and if this persists the log may have been rolled back",
            ) from None
        proof = _hashes(served, "proof")
        try:
            merkle.verify_consistency(
                small.size, large.size, proof, small.root_hash, large.root_hash
            )
        except merkle.ProofError as exc:
            raise _split(old, new, f"are not consistent ({exc.code})") from None
    return "extended" if new.size > old.size else "behind"


def verify_log(
    base_url: str,
    token: str | None,
    log_key: str,
    *,
    state: Path | None = None,
    full: bool = False,
    index: int | None = None,
    http: HttpClient | None = None,
    witnesses: int = 0,
    witness_keys: Sequence[str] = (),
) -> Report:
    """Verify the broker's latest checkpoint, its consistency with `state`, and optionally more.

    With `witnesses` K > 0: the latest checkpoint with K cosignatures, which K distinct keys of
    `witness_keys` must have validly cosigned.
    """
    verifier = parse_key(log_key)
    pinned = parse_witness_keys(witness_keys) if witnesses else []
    if witnesses and len(pinned) < witnesses:
        raise VerifyError(
            "bad_witness_key",
            f"{witnesses} witnesses required but {len(pinned)} distinct witness keys pinned",
        )
    stored = _read_state(state)
    where = f"stored checkpoint in {state}"
    steps = _verify(LogKeys(verifier), stored, full, index, (witnesses, pinned), where)
    # The same driver as the broker's own check; the partner's reads are plain HTTP calls.
    if http is None:
        with open_http(base_url) as owned:
            report, text = asyncio.run(_drive(steps, LogClient(owned, token)))
    else:
        report, text = asyncio.run(_drive(steps, LogClient(http, token)))
    if state is not None and report.relation != "behind":
        _save_state(state, text)
    return report


async def verify_source(
    source: LogSource,
    log_key: str,
    *,
    previous: str | None = None,
    full: bool = False,
    index: int | None = None,
) -> Report:
    """`verify_log`'s checks over an async source; `previous` is a checkpoint verified before."""
    keys = LogKeys(parse_key(log_key))
    steps = _verify(keys, previous, full, index, where="earlier checkpoint")
    report, _ = await _drive(steps, source)
    return report


def _verify(
    keys: LogKeys,
    stored_text: str | None,
    full: bool,
    index: int | None,
    witnesses: tuple[int, Sequence[note.CosignerVerifier]] = (0, ()),
    where: str = "stored checkpoint",
) -> Steps[tuple[Report, str]]:
    """The checks of a verification; returns the report and the checkpoint note it verified.

    `stored_text` is a checkpoint verified before (`where` names it in errors); both it and the
    latest are verified with the pinned key or the keys its published rotations handed over to.
    """
    required, pinned = witnesses
    yield from keys.follow()
    stored = None if stored_text is None else _check_stored(stored_text, keys, where)
    try:
        text = yield (Read("cosigned_checkpoint", (required,)) if required else Read("checkpoint"))
    except VerifyError as exc:
        if required and "log.not_cosigned" in str(exc):
            raise VerifyError(
                "witnesses", f"the broker has no checkpoint with {required} cosignatures ({exc})"
            ) from None
        raise
    checkpoint = check_checkpoint(text, keys)
    report = Report(checkpoint.origin, checkpoint.size, checkpoint.root_hash)
    report.keys = [s.vkey for s in keys.spans] if len(keys.spans) > 1 else []
    if required:
        report.cosigned_by = check_cosignatures(text, pinned, required)
    if stored is not None:
        report.relation = yield from _consistent(stored, checkpoint)
        report.previous = (stored.size, stored.root_hash)
    if full:
        report.leaves_checked, report.nodes_checked = yield from _verify_full(checkpoint)
    if index is not None:
        yield from _verify_inclusion(checkpoint, index)
        report.included.append(index)
    return report, text


def _verify_full(checkpoint: note.Checkpoint) -> Steps[tuple[int, int]]:
    size = checkpoint.size
    hashes: list[bytes] = []
    while len(hashes) < size:
        page = yield Read("leaves", (len(hashes), size))
        items = page.get("leaves") or []
        if not items:
            raise VerifyError(
                "leaves",
                f"leaf {len(hashes)} is missing (full verification needs an auditor token that "
                "oversees every agency)",
            )
        for item in items:
            expected = len(hashes)
            if item.get("index") != expected:
                raise VerifyError(
                    "leaves", f"expected leaf {expected}, the broker served {item.get('index')}"
                )
            data = _unb64(item.get("leaf"), f"leaf {expected}", "leaves")
            digest = merkle.leaf_hash(data)
            if _unb64(item.get("hash"), f"hash of leaf {expected}", "leaves") != digest:
                raise VerifyError("leaves", f"leaf {expected}: stored hash differs from its bytes")
            try:
                doc = json.loads(data)
            except ValueError:
                raise VerifyError("leaves", f"leaf {expected} is not JSON") from None
            if not isinstance(doc, dict) or doc.get("index") != expected or doc.get("v") != 1:
                raise VerifyError("leaves", f"leaf {expected} names another index or version")
            hashes.append(digest)
            if len(hashes) == size:
                break
    store = merkle.MemoryTreeStore.from_leaf_hashes(hashes)
    got = merkle.root(size, store)
    if got != checkpoint.root_hash:
        raise VerifyError(
            "leaves",
            f"the {size} leaves give root {_b64(got)}, the checkpoint says "
            f"{_b64(checkpoint.root_hash)}",
        )
    return size, (yield from _verify_nodes(store, size))


def _verify_nodes(store: merkle.MemoryTreeStore, size: int) -> Steps[int]:
    checked = 0
    for level in range(size.bit_length()):
        count = size >> level
        start = 0
        while start < count:
            page = yield Read("nodes", (level, start, count))
            served = [_unb64(h, f"node ({level}, {start})", "nodes") for h in page["hashes"]]
            if not served:
                raise VerifyError("nodes", f"stored node ({level}, {start}) is missing")
            for offset, digest in enumerate(served):
                i = start + offset
                if i >= count or store.levels[level][i] != digest:
                    raise VerifyError(
                        "nodes", f"stored node ({level}, {i}) differs from the leaves' tree"
                    )
            start += len(served)
            checked += len(served)
    return checked


def _verify_inclusion(checkpoint: note.Checkpoint, index: int) -> Steps[None]:
    if not 0 <= index < checkpoint.size:
        raise VerifyError("bad_proof", f"leaf {index} is not in the tree of size {checkpoint.size}")
    doc = yield Read("inclusion", (index, checkpoint.size))
    if doc.get("leafIdx") != index or doc.get("treeSize") != checkpoint.size:
        raise VerifyError("bad_proof", "the proof is for another leaf or tree size")
    leaf_hash = _unb64(doc.get("leafHash"), "leafHash", "bad_proof")
    # Hash the leaf ourselves when this token may read it.
    try:
        page = yield Read("leaves", (index, index + 1))
    except VerifyError:
        page = {}
    for item in page.get("leaves") or []:
        if item.get("index") == index:
            data = _unb64(item.get("leaf"), f"leaf {index}", "leaves")
            if merkle.leaf_hash(data) != leaf_hash:
                raise VerifyError("bad_proof", f"leaf {index}'s bytes do not match the proof")
    try:
        merkle.verify_inclusion(
            leaf_hash, index, checkpoint.size, _hashes(doc, "proof"), checkpoint.root_hash
        )
    except merkle.ProofError as exc:
        raise VerifyError("bad_proof", f"inclusion of leaf {index} fails: {exc}") from None


# --- exports -------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What an export's verification established."""

    size: int
    root: bytes
    events: int
    proven: int

    def __str__(self) -> str:
        return (
            f"export against checkpoint size {self.size} root {_b64(self.root)}: signature OK; "
            f"{self.proven} of {self.events} events proven included and identical to their leaves"
            + (
                ""
                if self.proven == self.events
                else f"; {self.events - self.proven} not yet in that checkpoint"
            )
        )


def epoch_ms(text: str) -> int:
    """Floor epoch milliseconds of an RFC 3339 time (the leaf's `ts`)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - _EPOCH) // _MS


def _read_export(data: bytes) -> tuple[str, list[dict[str, Any]]]:
    text = data.decode("utf-8")
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        events = list(doc["events"])
        if not all(isinstance(e, dict) for e in events):
            raise TypeError("`events` holds something other than objects")
        return str(doc["checkpoint"]), events
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows or rows[0].get("record") != "checkpoint":
        raise VerifyError("export", "a CSV export starts with its checkpoint record")
    events = []
    for row in rows[1:]:
        events.append(
            {
                "id": row["id"],
                "created_at": row["created_at"],
                "kind": row["kind"],
                "actor": row["actor"],
                "subject": row["subject"] or None,
                "details": json.loads(row["details"]),
                "leaf_index": int(row["leaf_index"]) if row["leaf_index"] else None,
                "leaf": row["leaf"] or None,
                "proof": row["proof"].split() if row["leaf"] else None,
            }
        )
    return rows[0]["details"], events


def verify_export(data: bytes, log_key: str, *, require_all: bool = False) -> ExportReport:
    """Verify an export offline: checkpoint signature, each proof, each event against its leaf."""
    verifier = parse_key(log_key)
    try:
        checkpoint_text, events = _read_export(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise VerifyError("export", f"not an export: {exc}") from None
    checkpoint = check_checkpoint(checkpoint_text, verifier)
    proven = 0
    seen: set[int] = set()
    for event in events:
        if not event.get("proof") and not event.get("leaf"):
            if require_all:
                raise VerifyError("export", f"event {event.get('id')} has no inclusion proof")
            continue
        _verify_exported(event, checkpoint, seen)
        proven += 1
    return ExportReport(checkpoint.size, checkpoint.root_hash, len(events), proven)


def _verify_exported(event: dict[str, Any], checkpoint: note.Checkpoint, seen: set[int]) -> None:
    eid, index = event.get("id"), event.get("leaf_index")
    if not isinstance(index, int) or index in seen:
        raise VerifyError("export", f"event {eid}: missing or repeated leaf index {index}")
    seen.add(index)
    data = _unb64(event.get("leaf"), f"leaf of {eid}", "export")
    proof = [_unb64(h, f"proof of {eid}", "export") for h in event.get("proof") or []]
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(data), index, checkpoint.size, proof, checkpoint.root_hash
        )
    except merkle.ProofError as exc:
        raise VerifyError("export", f"event {eid}: inclusion proof fails ({exc})") from None
    try:
        rebuilt = leaf.leaf_bytes(
            kind=event["kind"],
            index=index,
            ts=epoch_ms(event["created_at"]),
            actor=event["actor"],
            subject=event["subject"],
            details=event["details"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError("export", f"event {eid}: malformed ({exc})") from None
    if rebuilt != data:
        raise VerifyError("export", f"event {eid}: its exported fields differ from leaf {index}")
