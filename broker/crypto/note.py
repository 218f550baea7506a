"""C2SP signed notes with Ed25519 keys, tlog-checkpoint note bodies, and witness cosignatures.

Byte-compatible with Go's ``golang.org/x/mod/sumdb/note`` (key strings, key IDs, signature lines),
so third-party verifiers accept the broker's checkpoints unchanged. Witnesses cosign checkpoints
with C2SP tlog-cosignature (``cosignature/v1``, key type 0x04): a signature line whose bytes are
key ID, a big-endian timestamp and an Ed25519 signature over the timestamped checkpoint body.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG_ED25519 = b"\x01"
ALG_COSIGNATURE_V1 = b"\x04"
COSIGNATURE_CONTEXT = "cosignature/v1\n"
MAX_TIMESTAMP = 2**63 - 1  # C2SP tlog-cosignature: the u64 timestamp stays below 2^63
SIG_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100  # as Go; C2SP requires accepting at least 16
MAX_TREE_SIZE = 2**64 - 1
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")  # not int(): it accepts "+1", " 1", "1_0" and "١"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note, key or checkpoint was rejected; ``code`` is a stable machine-readable reason."""

    # Codes: malformed, unverified, bad_signature, bad_key, bad_checkpoint, wrong_origin,
    # bad_timestamp.

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclass(frozen=True)
class NoteVerifier:
    """A pinned Ed25519 note verifier key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


@dataclass(frozen=True)
class NoteSigner:
    """An Ed25519 note signer key."""

    name: str
    key_id: bytes
    private_key: Ed25519PrivateKey = field(repr=False)


def _b64decode(s: str, code: str) -> bytes:
    # Standard alphabet, padded and canonical: one encoding per value, so a signed text cannot be
    # varied without changing its meaning.
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        raise NoteError(code, "invalid base64") from None
    if base64.b64encode(raw).decode() != s:
        raise NoteError(code, "non-canonical base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _valid_name(name: str) -> bool:
    return (
        name != ""
        and "+" not in name
        and not any(c.isspace() or c < " " for c in name)
        and _is_utf8(name)
    )


def _is_utf8(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _check_text(text: str, code: str) -> None:
    # Note text: UTF-8, newline-terminated, no ASCII control characters other than newline.
    if not text.endswith("\n") or _CONTROL.search(text) or not _is_utf8(text):
        raise NoteError(code, "text must be UTF-8 lines ending in newline, without control chars")


def key_id(name: str, public_key: Ed25519PublicKey, alg: bytes = ALG_ED25519) -> bytes:
    """C2SP key ID: SHA-256(name ‖ 0x0A ‖ alg ‖ public key)[:4] (alg 0x01 notes, 0x04 witnesses)."""
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(name.encode() + b"\n" + alg + raw).digest()[:4]


_KEY_TYPES = {
    ALG_ED25519: "an Ed25519 (type 0x01)",
    ALG_COSIGNATURE_V1: "a cosignature/v1 (type 0x04)",
}


def _parse_key(body: str, alg: bytes = ALG_ED25519) -> tuple[str, bytes, bytes]:
    # "<name>+<key id hex>+<base64(alg ‖ key)>"; the base64 part may itself contain '+'.
    parts = body.split("+", 2)
    if len(parts) != 3 or not _valid_name(parts[0]) or not _HEX8.fullmatch(parts[1]):
        raise NoteError("bad_key", "expected <name>+<key id>+<base64 key>")
    raw = _b64decode(parts[2], "bad_key")
    if raw[:1] != alg or len(raw) != 33:
        raise NoteError("bad_key", f"not {_KEY_TYPES[alg]} key")
    return parts[0], bytes.fromhex(parts[1]), raw[1:]


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a Go note verifier key ``<name>+<keyid>+<base64(0x01 ‖ pub)>``."""
    name, kid, raw = _parse_key(vkey)
    public_key = Ed25519PublicKey.from_public_bytes(raw)
    if key_id(name, public_key) != kid:
        raise NoteError("bad_key", "key id does not match name and key")
    return NoteVerifier(name, kid, public_key)


def format_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """Format a Go note verifier key ``<name>+<keyid>+<base64(0x01 ‖ pub)>``."""
    if not _valid_name(name):
        raise NoteError("bad_key", "invalid key name")
    raw = ALG_ED25519 + public_key.public_bytes_raw()
    return f"{name}+{key_id(name, public_key).hex()}+{_b64(raw)}"


def parse_signer_key(skey: str) -> NoteSigner:
    """Parse a Go note signer key ``PRIVATE+KEY+<name>+<keyid>+<base64(0x01 ‖ seed)>``."""
    if not skey.startswith(_PRIVATE_PREFIX):
        raise NoteError("bad_key", "signer keys start with PRIVATE+KEY+")
    name, kid, seed = _parse_key(skey.removeprefix(_PRIVATE_PREFIX))
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    if key_id(name, private_key.public_key()) != kid:
        raise NoteError("bad_key", "key id does not match name and key")
    return NoteSigner(name, kid, private_key)


def format_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """Format a Go note signer key ``PRIVATE+KEY+<name>+<keyid>+<base64(0x01 ‖ seed)>``."""
    if not _valid_name(name):
        raise NoteError("bad_key", "invalid key name")
    raw = ALG_ED25519 + private_key.private_bytes_raw()
    return f"{_PRIVATE_PREFIX}{name}+{key_id(name, private_key.public_key()).hex()}+{_b64(raw)}"


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` (newline-terminated) as a C2SP signed note with one Ed25519 signature."""
    _check_text(text, "malformed")
    if not _valid_name(name):
        raise NoteError("bad_key", "invalid key name")
    sig = private_key.sign(text.encode())
    return f"{text}\n{SIG_PREFIX}{name} {_b64(key_id(name, private_key.public_key()) + sig)}\n"


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """A well-formed note's text and its signature lines as (key name, decoded bytes)."""
    try:
        text_and_sigs = note.decode() if isinstance(note, bytes) else note
        _check_text(text_and_sigs, "malformed")
    except UnicodeDecodeError:
        raise NoteError("malformed", "not UTF-8") from None
    # The text ends at the last blank line; it may itself contain blank lines.
    split = text_and_sigs.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed", "no signature block")
    text, lines = text_and_sigs[: split + 1], text_and_sigs[split + 2 : -1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed", "too many signatures")
    signatures = []
    for line in lines:
        name, _, b64 = line.removeprefix(SIG_PREFIX).partition(" ")
        if not line.startswith(SIG_PREFIX) or not _valid_name(name):
            raise NoteError("malformed", "bad signature line")
        raw = _b64decode(b64, "malformed")
        if len(raw) < 5:
            raise NoteError("malformed", "signature too short")
        signatures.append((name, raw))
    return text, signatures


def verify_note(note: str | bytes, verifier: NoteVerifier) -> str:
    """Return the text of a signed note that carries a valid signature by ``verifier``."""
    # Signatures by other keys are ignored (rotation, witnesses); a malformed note, or an invalid
    # signature by the pinned key, rejects the whole note (C2SP signed-note, as Go's note.Open).
    text, signatures = _split_note(note)
    signed = text.encode()
    verified = False
    for name, raw in signatures:
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue  # unknown key
        # Every line of the pinned key must verify (Go checks only the first of duplicates).
        try:
            if len(raw) != 4 + 64:
                raise InvalidSignature
            verifier.public_key.verify(raw[4:], signed)
        except InvalidSignature:
            raise NoteError("bad_signature", f"invalid signature by {name}") from None
        verified = True
    if not verified:
        raise NoteError("unverified", f"no signature by {verifier.name}+{verifier.key_id.hex()}")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """C2SP tlog-checkpoint note text: origin, tree size, root hash, optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError("bad_checkpoint", "tree size out of range")
        if len(self.root_hash) != 32:
            raise NoteError("bad_checkpoint", "root hash must be 32 bytes")
        if any(line == "" or "\n" in line for line in (self.origin, *self.extensions)):
            raise NoteError("bad_checkpoint", "origin and extension lines must be non-empty lines")
        _check_text(self.format(), "bad_checkpoint")

    def format(self) -> str:
        """The note text: ``<origin>\\n<size>\\n<base64 root>\\n`` then extension lines."""
        return "".join(
            f"{line}\n"
            for line in (self.origin, str(self.size), _b64(self.root_hash), *self.extensions)
        )

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text (already verified with verify_note)."""
        _check_text(text, "bad_checkpoint")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or not _TREE_SIZE.fullmatch(lines[1]):
            raise NoteError("bad_checkpoint", "expected origin, decimal tree size, root hash")
        root_hash = _b64decode(lines[2], "bad_checkpoint")
        return cls(lines[0], int(lines[1]), root_hash, tuple(lines[3:]))


def verify_checkpoint(
    note: str | bytes, verifier: NoteVerifier, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint and check its origin (default: the verifier key's name)."""
    checkpoint = Checkpoint.parse(verify_note(note, verifier))
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise NoteError(
            "wrong_origin", f"checkpoint origin {checkpoint.origin!r}, expected {expected!r}"
        )
    return checkpoint


# --- witness cosignatures (C2SP tlog-cosignature, cosignature/v1) ---------------------------


@dataclass(frozen=True)
class CosignerVerifier:
    """A pinned witness key (cosignature/v1, type 0x04)."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


@dataclass(frozen=True)
class Cosigner:
    """A witness's cosigning key (cosignature/v1, type 0x04)."""

    name: str
    key_id: bytes
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        """A new random cosigner key named `name` (the witness's name in its signature lines)."""
        if not _valid_name(name):
            raise NoteError("bad_key", "invalid key name")
        private_key = Ed25519PrivateKey.generate()
        return cls(name, key_id(name, private_key.public_key(), ALG_COSIGNATURE_V1), private_key)

    @property
    def verifier_key(self) -> str:
        """The vkey a log operator and auditors pin: ``<name>+<keyid>+<base64(0x04 ‖ pub)>``."""
        return format_cosigner_vkey(self.name, self.private_key.public_key())

    def encrypted_pem(self, passphrase: str) -> bytes:
        """The private key as passphrase-encrypted PKCS#8 PEM (the keystore's file format)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
        )

    @classmethod
    def from_encrypted_pem(cls, vkey: str, pem: bytes, passphrase: str) -> Cosigner:
        """The cosigner of `vkey` from its encrypted PEM; `bad_key` if either does not fit."""
        verifier = parse_cosigner_vkey(vkey)
        try:
            loaded = serialization.load_pem_private_key(pem, passphrase.encode("utf-8"))
        except (TypeError, ValueError):
            raise NoteError("bad_key", "wrong passphrase, or not an encrypted key") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise NoteError("bad_key", "not an Ed25519 key")
        if loaded.public_key().public_bytes_raw() != verifier.public_key.public_bytes_raw():
            raise NoteError("bad_key", "the private key does not match its verifier key")
        return cls(verifier.name, verifier.key_id, loaded)


def parse_cosigner_vkey(vkey: str) -> CosignerVerifier:
    """Parse a witness verifier key ``<name>+<keyid>+<base64(0x04 ‖ pub)>``."""
    name, kid, raw = _parse_key(vkey, ALG_COSIGNATURE_V1)
    public_key = Ed25519PublicKey.from_public_bytes(raw)
    if key_id(name, public_key, ALG_COSIGNATURE_V1) != kid:
        raise NoteError("bad_key", "key id does not match name and key")
    return CosignerVerifier(name, kid, public_key)


def format_cosigner_vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """Format a witness verifier key ``<name>+<keyid>+<base64(0x04 ‖ pub)>``."""
    if not _valid_name(name):
        raise NoteError("bad_key", "invalid key name")
    raw = ALG_COSIGNATURE_V1 + public_key.public_bytes_raw()
    return f"{name}+{key_id(name, public_key, ALG_COSIGNATURE_V1).hex()}+{_b64(raw)}"


def parse_cosigner_skey(skey: str) -> Cosigner:
    """Parse a witness signer key ``PRIVATE+KEY+<name>+<keyid>+<base64(0x04 ‖ seed)>``."""
    if not skey.startswith(_PRIVATE_PREFIX):
        raise NoteError("bad_key", "signer keys start with PRIVATE+KEY+")
    name, kid, seed = _parse_key(skey.removeprefix(_PRIVATE_PREFIX), ALG_COSIGNATURE_V1)
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    if key_id(name, private_key.public_key(), ALG_COSIGNATURE_V1) != kid:
        raise NoteError("bad_key", "key id does not match name and key")
    return Cosigner(name, kid, private_key)


def format_cosigner_skey(signer: Cosigner) -> str:
    """Format a witness signer key ``PRIVATE+KEY+<name>+<keyid>+<base64(0x04 ‖ seed)>``."""
    raw = ALG_COSIGNATURE_V1 + signer.private_key.private_bytes_raw()
    return f"{_PRIVATE_PREFIX}{signer.name}+{signer.key_id.hex()}+{_b64(raw)}"


def _checkpoint_text(note_or_text: str | bytes) -> str:
    # A signed note gives its text; plain text is taken as it is. Either must be a checkpoint.
    raw = note_or_text.decode() if isinstance(note_or_text, bytes) else note_or_text
    text = _split_note(raw)[0] if "\n\n" in raw else raw
    Checkpoint.parse(text)
    return text


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise NoteError("bad_timestamp", "the timestamp is not an integer")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError("bad_timestamp", "the timestamp is outside [0, 2^63 - 1]")


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the context line, ``time <t>``, then the checkpoint body."""
    _check_timestamp(timestamp)
    return f"{COSIGNATURE_CONTEXT}time {timestamp}\n{checkpoint_text}".encode()


def cosign(note_or_text: str | bytes, signer: Cosigner, timestamp: int) -> str:
    """The witness's signature line (without its newline) over a checkpoint at `timestamp`.

    `note_or_text` is the signed checkpoint note (its text is cosigned, every extension line
    included) or the checkpoint text itself. The caller has verified the log's signature and
    the checkpoint's consistency first: a cosignature vouches for both.
    """
    text = _checkpoint_text(note_or_text)
    sig = signer.private_key.sign(cosigned_message(text, timestamp))
    raw = signer.key_id + timestamp.to_bytes(8, "big") + sig
    return f"{SIG_PREFIX}{signer.name} {_b64(raw)}"


def verify_cosignature(note: str | bytes, verifier: CosignerVerifier) -> int:
    """The timestamp of `verifier`'s cosignature on a signed checkpoint note.

    Strict as `verify_note`: a malformed note rejects, every line of the pinned key must verify
    (the newest timestamp is returned), and no line of it is `unverified`. The log's own
    signature is not checked here: verify it with `verify_checkpoint` and the log key.
    """
    text, signatures = _split_note(note)
    Checkpoint.parse(text)
    newest: int | None = None
    for name, raw in signatures:
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue
        if len(raw) != 4 + 8 + 64:
            raise NoteError("bad_signature", f"cosignature by {name} is not 76 bytes")
        timestamp = int.from_bytes(raw[4:12], "big")
        if timestamp > MAX_TIMESTAMP:
            raise NoteError("bad_timestamp", f"cosignature by {name} has a timestamp past 2^63-1")
        try:
            verifier.public_key.verify(raw[12:], cosigned_message(text, timestamp))
        except InvalidSignature:
            raise NoteError("bad_signature", f"invalid cosignature by {name}") from None
        newest = timestamp if newest is None else max(newest, timestamp)
    if newest is None:
        raise NoteError("unverified", f"no cosignature by {verifier.name}+{verifier.key_id.hex()}")
    return newest


def signature_lines(note: str | bytes) -> tuple[str, list[str]]:
    """A well-formed note's text and its signature lines (each without its newline)."""
    text, signatures = _split_note(note)
    return text, [f"{SIG_PREFIX}{name} {_b64(raw)}" for name, raw in signatures]


def add_signatures(note: str | bytes, lines: list[str]) -> str:
    """The note with signature `lines` appended (those it already carries are not repeated)."""
    text, present = signature_lines(note)
    added = [line.removesuffix("\n") for line in lines]
    kept = present + [line for line in dict.fromkeys(added) if line not in present]
    result = text + "\n" + "".join(f"{line}\n" for line in kept)
    _split_note(result)  # each added line must be a well-formed signature line
    return result
