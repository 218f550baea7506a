"""Agency keys: Ed25519 signing and X25519 encryption keys, public JWKs, key files.

Public keys travel as OKP JWKs (RFC 8037) whose `kid` is the RFC 7638 thumbprint over
`{"crv","kty","x"}`. Private keys stay on the agency side as PKCS#8 `ENCRYPTED PRIVATE KEY`
PEM files (PROTOCOL.md section 6.5). `cryptography` protects those with PBKDF2 at only 2,048
iterations, so a generated passphrase of at least 128 bits is required: at that entropy the
iteration count does not matter.
"""

import base64
import binascii
import functools
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from broker.crypto.errors import (
    BadSignature,
    CryptoError,
    InsecureKeyStorage,
    InvalidKey,
    KeyCompromised,
    KeyKidMismatch,
    KeyNotValidAt,
    KeyUnreadable,
    LowOrderKey,
    Malformed,
    PrivateMaterial,
    WeakPassphrase,
    WrongCurve,
    WrongUse,
)

Use = Literal["sig", "enc"]
SIG_ALG = "Ed25519"
ENC_ALG = "ECDH-ES+A256KW"
CURVES: Mapping[Use, str] = {"sig": "Ed25519", "enc": "X25519"}
# `EdDSA` is the pre-RFC 9864 name some partner stacks still write into their JWKs.
_KEY_ALGS: Mapping[Use, frozenset[str]] = {
    "sig": frozenset({SIG_ALG, "EdDSA"}),
    "enc": frozenset({ENC_ALG}),
}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")

# --- base64url (RFC 7515 section 2: no padding) ---------------------------------------------


def b64u_encode(data: bytes) -> str:
    """Encode bytes as unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_ascii(text: str, error: type[CryptoError]) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise error("not unpadded base64url")
    raw = text.encode("ascii")
    if raw.translate(None, _B64U_BYTES) or len(raw) % 4 == 1:
        raise error("not unpadded base64url")
    # Unused low bits of the last character must be zero, so that each value has exactly one
    # encoding and a signature or key cannot be re-encoded into a different string.
    unused = {2: 0x0F, 3: 0x03}.get(len(raw) % 4, 0)
    if unused and _B64U_ALPHABET.index(text[-1]) & unused:
        raise error("non-canonical base64url")
    return raw


def b64u_check(text: str, error: type[CryptoError] = Malformed) -> None:
    """Refuse anything but canonical unpadded base64url, without decoding it."""
    _b64u_ascii(text, error)


def sha256_b64u(data: bytes) -> str:
    """base64url (no padding) SHA-256: how envelopes, acks and policies are identified."""
    return b64u_encode(hashlib.sha256(data).digest())


def b64u_decode(text: str, error: type[CryptoError] = Malformed) -> bytes:
    """Decode canonical unpadded base64url; refuse other alphabets, padding and spare bits."""
    raw = _b64u_ascii(text, error)
    return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4))


_B64U_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64U_BYTES = _B64U_ALPHABET.encode("ascii")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")

# --- small-order points ---------------------------------------------------------------------

_P = 2**255 - 19


def _table(*values: int) -> frozenset[bytes]:
    return frozenset(v.to_bytes(32, "little") for v in values)


# Encodings of small-order points with the top bit cleared (libsodium's blocklists). X25519:
# u = 0, 1, the two order-8 u values, p-1, and the non-canonical p, p+1; any scalar gives an
# all-zero shared secret. Ed25519: y = 0, 1, the two order-8 y values, p-1, p, p+1; OpenSSL
# accepts signatures under such a key for any message (tested), so a sender could later
# deny its alerts.
_X25519_SMALL_ORDER = _table(
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
    _P,
    _P + 1,
)
_ED25519_SMALL_ORDER = _table(
    0,
    1,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
    _P - 1,
    _P,
    _P + 1,
)


def is_small_order(raw: bytes, curve: str) -> bool:
    """Whether a raw 32-byte X25519 or Ed25519 public key is a small-order point."""
    table = _X25519_SMALL_ORDER if curve == "X25519" else _ED25519_SMALL_ORDER
    return raw[:31] + bytes([raw[31] & 0x7F]) in table


# --- public JWKs ----------------------------------------------------------------------------


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a JWK."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise InvalidKey("cannot compute a thumbprint: unknown kty or missing members")
    required = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"))
    return b64u_encode(hashlib.sha256(required.encode("utf-8")).digest())


@dataclass(frozen=True, slots=True)
class PublicJWK:
    """A validated public OKP key with its use, thumbprint `kid` and directory metadata."""

    use: Use
    x: str
    kid: str
    key: Ed25519PublicKey | X25519PublicKey = field(repr=False, compare=False)
    # Members this module does not interpret (agency, focal_point, status, nbf, exp, ...).
    # RFC 7517 section 4 says to ignore them; the directory carries its metadata there.
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def alg(self) -> str:
        """The algorithm we emit for this key."""
        return SIG_ALG if self.use == "sig" else ENC_ALG

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 signature over `data`; raises BadSignature, never returns False."""
        if not isinstance(self.key, Ed25519PublicKey):
            raise WrongUse("only a sig key verifies signatures")
        try:
            self.key.verify(signature, data)
        except InvalidSignature as exc:
            raise BadSignature() from exc

    @property
    def jwk(self) -> dict[str, str]:
        """The public JWK as published: kty, crv, x, use, alg, kid (no metadata)."""
        return {
            "kty": "OKP",
            "crv": CURVES[self.use],
            "x": self.x,
            "use": self.use,
            "alg": self.alg,
            "kid": self.kid,
        }


_JOSE_MEMBERS = frozenset({"kty", "crv", "x", "use", "alg", "kid", "key_ops"})


@functools.lru_cache(maxsize=1024)
def _load_public(use: Use, x: str) -> tuple[str, Ed25519PublicKey | X25519PublicKey]:
    # Cached because the broker resolves the same few directory keys on every request.
    raw = b64u_decode(x, InvalidKey)
    if len(raw) != 32:
        raise InvalidKey(f"x must be 32 bytes, not {len(raw)}")
    if is_small_order(raw, CURVES[use]):
        raise LowOrderKey()
    loaded = (
        Ed25519PublicKey.from_public_bytes(raw)
        if use == "sig"
        else X25519PublicKey.from_public_bytes(raw)
    )
    return thumbprint({"kty": "OKP", "crv": CURVES[use], "x": x}), loaded


def parse_public_jwk(jwk: Mapping[str, Any], *, use: Use | None = None) -> PublicJWK:
    """Validate a public Ed25519 (sig) or X25519 (enc) JWK, optionally of a required use."""
    if not isinstance(jwk, Mapping):
        raise InvalidKey("a JWK must be a JSON object")
    if private := sorted(_PRIVATE_MEMBERS & jwk.keys()):
        raise PrivateMaterial(f"private key member(s) {private} in a public JWK")
    if jwk.get("use") not in CURVES or (use is not None and jwk["use"] != use):
        raise WrongUse(f"use must be {use or 'sig or enc'}, not {jwk.get('use')!r}")
    key_use: Use = jwk["use"]
    if jwk.get("kty") != "OKP" or jwk.get("crv") != CURVES[key_use]:
        raise WrongCurve(f"a {key_use} key must be OKP {CURVES[key_use]}")
    if "alg" in jwk and jwk["alg"] not in _KEY_ALGS[key_use]:
        raise WrongUse(f"alg {jwk['alg']!r} does not fit use {key_use}")
    x = jwk.get("x")
    if not isinstance(x, str):
        raise InvalidKey("x must be a base64url string")
    kid, loaded = _load_public(key_use, x)
    if "kid" in jwk and jwk["kid"] != kid:
        raise KeyKidMismatch(f"kid {jwk['kid']!r} is not the thumbprint {kid}")
    meta = {k: v for k, v in jwk.items() if k not in _JOSE_MEMBERS}
    return PublicJWK(use=key_use, x=x, kid=kid, key=loaded, meta=meta)


def check_valid_at(key: PublicJWK, at: datetime | int) -> None:
    """Refuse a directory key that was not valid at `at` (NumericDate nbf, exp, revocation)."""
    t = int(at.timestamp()) if isinstance(at, datetime) else at

    def time(name: str) -> int | None:
        value = key.meta.get(name)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        # Fail closed: a time in another format must not read as "no limit".
        raise InvalidKey(f"{name} of key {key.kid} is not a NumericDate")

    if (since := time("compromised_since")) is not None and since <= t:
        raise KeyCompromised(f"key {key.kid} compromised since {since}, at or before {t}")
    if (nbf := time("nbf")) is not None and t < nbf:
        raise KeyNotValidAt(f"key {key.kid} not valid before {nbf}")
    if (exp := time("exp")) is not None and t >= exp:
        raise KeyNotValidAt(f"key {key.kid} expired at {exp}")
    if (revoked := time("revoked_at")) is not None and revoked <= t:
        raise KeyNotValidAt(f"key {key.kid} revoked at {revoked}")


# --- private keys ---------------------------------------------------------------------------


def _public_of(use: Use, raw: bytes) -> PublicJWK:
    return parse_public_jwk({"kty": "OKP", "crv": CURVES[use], "x": b64u_encode(raw), "use": use})


@dataclass(frozen=True, slots=True, eq=False)
class SigningKey:
    """An agency's Ed25519 signing key."""

    private_key: Ed25519PrivateKey = field(repr=False)
    public: PublicJWK = field(init=False)

    def __post_init__(self) -> None:
        raw = self.private_key.public_key().public_bytes_raw()
        object.__setattr__(self, "public", _public_of("sig", raw))

    @classmethod
    def generate(cls) -> "SigningKey":
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "SigningKey":
        """The key for a 32-byte RFC 8032 seed (deterministic tests and benchmarks)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def kid(self) -> str:
        """RFC 7638 thumbprint of the public key."""
        return self.public.kid

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over `data`."""
        return self.private_key.sign(data)


@dataclass(frozen=True, slots=True, eq=False)
class EncryptionKey:
    """An agency's X25519 encryption (key agreement) key."""

    private_key: X25519PrivateKey = field(repr=False)
    public: PublicJWK = field(init=False)

    def __post_init__(self) -> None:
        raw = self.private_key.public_key().public_bytes_raw()
        object.__setattr__(self, "public", _public_of("enc", raw))

    @classmethod
    def generate(cls) -> "EncryptionKey":
        """A new random key."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "EncryptionKey":
        """The key for a 32-byte RFC 7748 private scalar (deterministic tests and benchmarks)."""
        return cls(X25519PrivateKey.from_private_bytes(seed))

    @property
    def kid(self) -> str:
        """RFC 7638 thumbprint of the public key."""
        return self.public.kid


PrivateKey = SigningKey | EncryptionKey
_K = TypeVar("_K", SigningKey, EncryptionKey)

# --- passphrases and key files --------------------------------------------------------------

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
PASSPHRASE_LENGTH = 26  # 26 x 5 bits = 130 bits
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9-]{0,63})?")
_KEY_FILE = re.compile(r".*-(sig|enc)-([A-Za-z0-9_-]{43})\.p8\.pem")


def generate_passphrase() -> str:
    """A random 26-character base32 passphrase (130 bits)."""
    return "".join(secrets.choice(_BASE32) for _ in range(PASSPHRASE_LENGTH))


def check_passphrase(passphrase: str) -> None:
    """Refuse a passphrase that is not a generated one of at least 128 bits."""
    chars = set(passphrase)
    # Bits per character of the smallest alphabet that holds it: base32 (either case) or
    # base64url. Anything else was typed, not generated.
    if chars <= set(_BASE32) or chars <= set(_BASE32.lower()):
        bits = 5 * len(passphrase)
    elif chars <= set(_B64U_ALPHABET):
        bits = 6 * len(passphrase)
    else:
        bits = 0
    # The count holds for random strings only; a random one this long has about 17 distinct
    # characters, so fewer than 10 means a pattern such as a repeated word.
    if bits < 128 or len(chars) < 10:
        raise WeakPassphrase()


def key_file_name(owner: str, key: PrivateKey) -> str:
    """`<owner>-<sig|enc>-<kid>.p8.pem`, with a focal point's `/` written as `__`."""
    if not _OWNER.fullmatch(owner):
        raise InvalidKey(f"owner {owner!r} is not an agency or focal point id")
    return f"{owner.replace('/', '__')}-{key.public.use}-{key.kid}.p8.pem"


def _refuse_shared(path: Path, what: str) -> None:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise InsecureKeyStorage(f"{what} {path} is accessible to group or others")


def save_private_key(key: PrivateKey, directory: Path, owner: str, passphrase: str) -> Path:
    """Write the key as encrypted PKCS#8 PEM, mode 0600 in a 0700 directory; return its path."""
    check_passphrase(passphrase)
    path = directory / key_file_name(owner, key)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _refuse_shared(directory, "key directory")
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )
    # Written whole under a temporary name, then linked: a crash never leaves a truncated file
    # under a key's name, and link, like O_EXCL, never overwrites a key (which could destroy
    # the only copy of a decryption key).
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _load(path: Path, passphrase: str) -> PrivateKeyTypes:
    _refuse_shared(path, "key file")
    try:
        return serialization.load_pem_private_key(path.read_bytes(), passphrase.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # TypeError: the file is not encrypted
        raise KeyUnreadable(f"{path.name}: wrong passphrase or not an encrypted key") from exc


def _named_right(path: Path, key: _K) -> _K:
    # A renamed or swapped file would otherwise be registered or used under the wrong kid.
    match = _KEY_FILE.fullmatch(path.name)
    if match and match.groups() != (key.public.use, key.kid):
        raise KeyKidMismatch(f"{path.name} holds the {key.public.use} key {key.kid}")
    return key


def load_signing_key(path: Path, passphrase: str) -> SigningKey:
    """Load an encrypted PKCS#8 Ed25519 key file."""
    loaded = _load(path, passphrase)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyUnreadable(f"{path.name} does not hold an Ed25519 key")
    return _named_right(path, SigningKey(loaded))


def load_encryption_key(path: Path, passphrase: str) -> EncryptionKey:
    """Load an encrypted PKCS#8 X25519 key file."""
    loaded = _load(path, passphrase)
    if not isinstance(loaded, X25519PrivateKey):
        raise KeyUnreadable(f"{path.name} does not hold an X25519 key")
    return _named_right(path, EncryptionKey(loaded))
