"""A log witness run by a partner agency: follow the checkpoints, check them, cosign them.

`Witness.run_once()` reads the broker's checkpoints with the agency's own copy of the log key,
and cosigns (C2SP tlog-cosignature) each one it can vouch for:

1. the checkpoint verifies with the pinned log key, for its origin;
2. the broker still serves, for the size last cosigned, the very checkpoint this witness
   cosigned then (same root);
3. it is no smaller than the last one cosigned (a smaller one is a rollback, refused);
4. of one size, it has the root the witness saw before; larger, the broker proves it consistent
   (`GET /v1/log/proof/consistency`) with the last one cosigned.

Two signed checkpoints that disagree (one size, two roots; or a tree that does not extend the
one cosigned) are a split view: nothing more is cosigned, both signed notes are written to
`<state>/split-view-<size>-<time>.txt`, the proof that the log key signed both, and `SplitView`
is raised. The last checkpoint cosigned is kept in `<state>/witness.json` (the format of
`broker audit verify --state`), replaced atomically after each cosignature is accepted.

Besides the latest checkpoint, a run cosigns the checkpoint the most witnesses have cosigned
already, when it lies between the last one cosigned and the latest: every cosignature is an
event on the log, so the latest checkpoint moves on after each witness's run, and without this
the witnesses would rarely meet on one checkpoint that auditors can require K of them on.

The key is a cosignature/v1 Ed25519 key in the keystore folder (encrypted PKCS#8 with the
keystore's passphrase, mode 0600, beside its verifier key): `init` writes it, `load` reads it.
Only the base dependencies: no server package is imported.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.audit import verify
from broker.crypto import keys, merkle, note
from broker.crypto.errors import WeakPassphrase
from broker.sdk.client import BrokerAPIError, BrokerClient

STATE_FILE = "witness.json"
MAX_COSIGNED_QUERY = 16  # how many witnesses' agreement a run looks for at most


class WitnessError(Exception):
    """The witness refused to cosign or could not run; `code` says which check failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SplitView(WitnessError):
    """The broker showed two checkpoints that cannot both be true; `proof` is the file."""

    def __init__(self, message: str, proof: Path) -> None:
        super().__init__("split_view", f"{message}; both signed notes are in {proof}")
        self.proof = proof


# --- the key ---------------------------------------------------------------------------------


def _stem(vkey: note.CosignerVerifier) -> str:
    # The name may hold any non-space character ('/', ':'): the key ID names the files.
    return f"witness-{vkey.key_id.hex()}"


def init(folder: Path, name: str, passphrase: str) -> tuple[Path, str]:
    """Generate a cosigner key named `name` into `folder`; return its file and verifier key."""
    try:
        keys.check_passphrase(passphrase)
    except WeakPassphrase:
        raise WitnessError(
            "passphrase", "the keystore passphrase is not one of at least 128 bits"
        ) from None
    try:
        signer = note.Cosigner.generate(name)
    except note.NoteError:
        raise WitnessError(
            "bad_name", f"{name!r} cannot name a key: no spaces, no '+', not empty"
        ) from None
    existing = [v for v in verifier_keys(folder) if v.name == name]
    if existing:
        raise WitnessError(
            "exists",
            f"{folder} already holds a witness key named {name!r} ({existing[0].key_id.hex()})",
        )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.stat(folder).st_mode & 0o077:
        raise WitnessError(
            "insecure", f"the keystore {folder} is open to group or others: chmod 700"
        )
    verifier = note.parse_cosigner_vkey(signer.verifier_key)
    path = folder / f"{_stem(verifier)}.p8.pem"
    _write_new(path, signer.encrypted_pem(passphrase))
    _write_new(folder / f"{_stem(verifier)}.vkey", (signer.verifier_key + "\n").encode())
    return path, signer.verifier_key


def _write_new(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite a key; 0600 from the start, never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def verifier_keys(folder: Path) -> list[note.CosignerVerifier]:
    """The witness keys in `folder` (their public halves), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("witness-*.vkey"), key=lambda p: p.stat().st_mtime):
        try:
            found.append(note.parse_cosigner_vkey(path.read_text().strip()))
        except note.NoteError:
            continue
    return found


def load(folder: Path, passphrase: str, name: str | None = None) -> note.Cosigner:
    """The witness key in `folder` (the one named `name` when it holds several)."""
    found = [v for v in verifier_keys(folder) if name is None or v.name == name]
    if not found:
        which = f"named {name!r} " if name else ""
        raise WitnessError(
            "no_key", f"no witness key {which}in {folder}: create one with `broker witness init`"
        )
    if len(found) > 1:
        names = ", ".join(v.name for v in found)
        raise WitnessError("several_keys", f"{folder} holds several witness keys ({names})")
    verifier = found[0]
    pem = folder / f"{_stem(verifier)}.p8.pem"
    if os.stat(pem).st_mode & 0o077:
        raise WitnessError("insecure", f"{pem} is readable by group or others: chmod 600")
    vkey = note.format_cosigner_vkey(verifier.name, verifier.public_key)
    try:
        return note.Cosigner.from_encrypted_pem(vkey, pem.read_bytes(), passphrase)
    except note.NoteError as exc:
        raise WitnessError("passphrase", f"{pem}: {exc}") from None


# --- following the log ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cosigned:
    """A checkpoint this witness cosigned and the broker stored."""

    origin: str
    size: int
    root: bytes
    timestamp: int

    def __str__(self) -> str:
        root = base64.b64encode(self.root).decode()
        return f"cosigned {self.origin} size {self.size} root {root} at {self.timestamp}"


@dataclass(frozen=True)
class _Seen:
    text: str  # the signed note as served
    checkpoint: note.Checkpoint


class Witness:
    """One witness key following one broker's log, with its state in `state`."""

    def __init__(
        self,
        client: BrokerClient,
        signer: note.Cosigner,
        log_key: str,
        state: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.signer = signer
        self.state = state
        self.clock = clock
        try:
            self.verifier = verify.parse_key(log_key)
        except verify.VerifyError as exc:
            raise WitnessError("bad_key", str(exc)) from None

    @property
    def state_file(self) -> Path:
        return self.state / STATE_FILE

    def kept(self) -> _Seen | None:
        """The last checkpoint cosigned, from the state folder."""
        if not self.state_file.exists():
            return None
        try:
            checkpoint = verify._load_state(self.state_file, self.verifier)
            text = json.loads(self.state_file.read_text(encoding="utf-8"))["checkpoint"]
        except verify.VerifyError as exc:
            raise WitnessError("state", f"{exc} (kept under another log key?)") from None
        assert checkpoint is not None
        return _Seen(text, checkpoint)

    def _get(self, path: str, **params: Any) -> Any:
        try:
            return self.client.get(path, **params)
        except BrokerAPIError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise  # transient: the next run retries
            code = "not_cosigned" if exc.code == "log.not_cosigned" else "http"
            raise WitnessError(code, f"GET {path} answered {exc}") from None

    def _checkpoint(self, **params: Any) -> _Seen:
        text = self._get("/v1/log/checkpoint", **params)
        if not isinstance(text, str):
            raise WitnessError("bad_checkpoint", "the checkpoint is not text")
        try:
            return _Seen(text, verify.check_checkpoint(text, self.verifier))
        except verify.VerifyError as exc:
            raise WitnessError("bad_checkpoint", str(exc)) from None

    def _most_cosigned(self, not_before: int) -> _Seen | None:
        """The latest checkpoint of at least `not_before` leaves carrying the most cosignatures
        (None: none has any). An older one with more is of no use: this witness is past it."""
        best = None
        for k in range(1, MAX_COSIGNED_QUERY + 1):
            try:
                found = self._checkpoint(cosigned=k)
            except WitnessError as exc:
                if exc.code == "not_cosigned":
                    break
                raise
            if found.checkpoint.size < not_before:
                break  # each larger k answers an older checkpoint
            best = found
        return best

    def run_once(self) -> list[Cosigned]:
        """Check and cosign what the broker serves now; returns the checkpoints cosigned."""
        kept = self.kept()
        latest = self._checkpoint()
        if kept is not None:
            # The broker must still serve, for that size, what was cosigned.
            self._compare(kept, self._checkpoint(size=kept.checkpoint.size))
            if latest.checkpoint.size < kept.checkpoint.size:
                raise WitnessError(
                    "rollback",
                    f"the broker's latest checkpoint (size {latest.checkpoint.size}) is smaller "
                    f"than the one this witness cosigned (size {kept.checkpoint.size}): refused",
                )
        candidates = {latest.checkpoint.size: latest}
        best = self._most_cosigned(0 if kept is None else kept.checkpoint.size)
        if best is not None:
            if best.checkpoint.size in candidates:
                self._compare(candidates[best.checkpoint.size], best)
            candidates.setdefault(best.checkpoint.size, best)
        done = []
        for size in sorted(candidates):
            seen = candidates[size]
            if kept is not None:
                self._compare_or_prove(kept, seen)
                if kept.checkpoint.size == size:
                    continue  # cosigned before
            done.append(self._cosign(seen))
            kept = seen
        return done

    def _compare(self, old: _Seen, new: _Seen) -> None:
        if old.checkpoint.size == new.checkpoint.size and (
            old.checkpoint.root_hash != new.checkpoint.root_hash
        ):
            self._split(old, new, "two checkpoints of one size with different roots", None)

    def _compare_or_prove(self, old: _Seen, new: _Seen) -> None:
        self._compare(old, new)
        size1, size2 = old.checkpoint.size, new.checkpoint.size
        if size1 == size2 or size1 == 0:
            return
        try:
            proof = self._get("/v1/log/proof/consistency", **{"from": size1, "to": size2})
        except WitnessError as exc:
            raise WitnessError(
                "unproven",
                f"the broker cannot prove checkpoint {size2} consistent with the cosigned "
                f"{size1} ({exc}): refused to cosign",
            ) from None
        try:
            hashes = [base64.b64decode(h, validate=True) for h in proof["proof"]]
            merkle.verify_consistency(
                size1, size2, hashes, old.checkpoint.root_hash, new.checkpoint.root_hash
            )
        except (merkle.ProofError, KeyError, TypeError, ValueError) as exc:
            why = getattr(exc, "code", type(exc).__name__)
            self._split(old, new, f"a tree that does not extend the one cosigned ({why})", proof)

    def _split(self, old: _Seen, new: _Seen, what: str, proof: Any) -> None:
        moment = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.state / f"split-view-{new.checkpoint.size}-{moment}.txt"
        header = [
            f"# Split view seen by witness {self.signer.name} at {moment}: {what}.",
            "# Both notes below verify with this log key; one log shows one tree only.",
            f"# log key: {note.format_verifier_key(self.verifier.name, self.verifier.public_key)}",
        ]
        if proof is not None:
            header.append(f"# the consistency proof the broker served: {json.dumps(proof)}")
        # Comment lines, then each signed note as served, separated by a `# ---` line.
        content = "\n".join(header) + "\n" + old.text + "# ---\n" + new.text
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
        root1 = base64.b64encode(old.checkpoint.root_hash).decode()
        root2 = base64.b64encode(new.checkpoint.root_hash).decode()
        raise SplitView(
            f"{what}: size {old.checkpoint.size} root {root1} and size {new.checkpoint.size} "
            f"root {root2}, both signed by the log key; refused to cosign",
            path,
        )

    def _cosign(self, seen: _Seen) -> Cosigned:
        timestamp = int(self.clock())
        text = seen.text[: seen.text.find("\n\n") + 1]
        line = note.cosign(text, self.signer, timestamp)
        body = {"checkpoint": note.add_signatures(seen.text, [line])}
        try:
            self.client._call("POST", "/v1/log/cosignatures", json=body)
        except BrokerAPIError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise
            raise WitnessError("refused", f"the broker refused the cosignature: {exc}") from None
        verify._save_state(self.state_file, seen.text)
        c = seen.checkpoint
        return Cosigned(c.origin, c.size, c.root_hash, timestamp)
