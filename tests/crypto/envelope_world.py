"""Deterministic agencies, routing and envelope builders for the envelope tests.

Keys are derived from the agency id at run time, so no private key is ever committed and
every run sees the same kids.
"""

import base64
import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.crypto import envelope
from broker.crypto.errors import CryptoError
from broker.crypto.keys import EncryptionKey, PublicJWK, SigningKey, b64u_encode

SHARED_VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
SENDER = "VN-GDC"
# 26 recipients, as in the MEKONG-DRAGON agreement (ARCHITECTURE.md section 2).
AGENCIES_26 = sorted(
    ["CN-GACC", "HK-CED", "KR-KCS", "NZ-POL", "VN-MPS", "VN-SPP", "MZ-PGR"]
    + [f"X{i:02d}-CUS" for i in range(19)]
)


@dataclass(frozen=True)
class Party:
    """An agency with its signing key and encryption keys (current first)."""

    agency: str
    sig: SigningKey
    enc: tuple[EncryptionKey, ...]

    def sig_jwk(self, **meta: Any) -> dict[str, Any]:
        """The directory entry of the signing key, with optional metadata members."""
        return {**self.sig.public.jwk, "agency": self.agency, **meta}


def _seed(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


@functools.cache
def party(agency: str, generation: int = 0) -> Party:
    """Deterministic keys for `agency`; a new generation is a rotated key set."""
    return Party(
        agency,
        SigningKey.from_seed(_seed(agency, "sig", generation)),
        tuple(EncryptionKey.from_seed(_seed(agency, "enc", generation, i)) for i in range(2)),
    )


def routing(sender: str = SENDER, recipients: Iterable[str] = ("HK-CED",), **over: Any) -> dict:
    """A v1 routing object (PROTOCOL.md section 4.2)."""
    return {
        "v": 1,
        "mid": "0190f3c2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",
        "iat": 1767225600,
        "exp": 1768435200,
        "sender": sender,
        "sender_fp": f"{sender}/fp-hcm-01",
        "recipients": sorted(recipients),
        "agreement": "MEKONG-DRAGON",
        "operation": "MEKONG-DRAGON-V",
        "offence": "narcotics",
        "subject_types": ["person", "vessel"],
        "priority": "urgent",
        **over,
    }


BODY = {
    "title": "Vessel of interest",
    "text": "Ngày 1 tháng 1: container lạnh, cảng Hải Phòng → Busan. Don't trust the manifest.",
    "subjects": [{"type": "vessel", "imo": "9074729"}],
}


def enc_keys(recipients: Iterable[str]) -> dict[str, PublicJWK]:
    """Each recipient's current encryption key, as a sender would take it from the directory."""
    return {agency: party(agency).enc[0].public for agency in recipients}


def build(
    recipients: Sequence[str] = ("HK-CED",),
    *,
    sender: str = SENDER,
    body: dict[str, Any] | None = None,
    **over: Any,
) -> str:
    """A well-formed envelope from `sender` to `recipients`."""
    r = routing(sender, recipients, **over)
    return envelope.build_envelope(
        r, BODY if body is None else body, party(sender).sig, enc_keys(r["recipients"])
    )


def open_as(agency: str, token: str, *, sender: str = SENDER, **kw: Any) -> envelope.OpenedAlert:
    """Open `token` as `agency` with all its keys and the sender's directory entry."""
    return envelope.open_envelope(
        token,
        my_agency=agency,
        my_enc_keys=party(agency).enc,
        sender_sig_jwk=party(sender).sig_jwk(),
        **kw,
    )


def seal(routing: dict[str, Any], jwe: dict[str, Any], signer: SigningKey) -> str:
    """An outer JWS over any routing and JWE: what a sender (or a thief of its key) can make."""
    return envelope.sign_compact({"routing": routing, "jwe": jwe}, signer, envelope.TYP_OUTER)


def encrypt(
    inner: str, recipients: Iterable[str], protected: str = envelope.JWE_PROTECTED
) -> dict[str, Any]:
    """A JWE of `inner` to the recipients' current keys."""
    keys = [party(a).enc[0].public for a in recipients]
    return envelope._encrypt(inner.encode(), keys, protected)


def inner_of(token: str, agency: str = "HK-CED") -> str:
    """The inner JWS of an envelope, as recipient `agency` sees it."""
    return open_as(agency, token).inner_jws


def outer_payload(token: str) -> dict[str, Any]:
    """The outer payload without verification (tests tamper with copies of it)."""
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@contextlib.contextmanager
def raises(code: str) -> Iterator[pytest.ExceptionInfo[CryptoError]]:
    """Expect a CryptoError with exactly this code."""
    with pytest.raises(CryptoError) as info:
        yield info
    assert info.value.code == code, f"got {info.value.code}: {info.value}"


def vectors(path: str) -> Path:
    """A file of the shared public vectors; skip when absent, but fail when CI=true."""
    target = SHARED_VECTORS / path
    if not target.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared vectors missing at {target}")
        pytest.skip(f"shared vectors not found at {target} (clone shared/ beside the project)")
    return target


def compact(header: dict[str, Any] | bytes, payload: bytes, signer: SigningKey) -> str:
    """A JWS Compact with any header bytes, validly signed: for header allowlist tests."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    signing_input = f"{b64u_encode(raw)}.{b64u_encode(payload)}"
    return f"{signing_input}.{b64u_encode(signer.sign(signing_input.encode()))}"


def header(signer: SigningKey, typ: str = envelope.TYP_OUTER, **over: Any) -> dict[str, Any]:
    """A JWS header as we emit it, with members changed or added."""
    return {"alg": "Ed25519", "kid": signer.kid, "typ": typ, **over}


def private_jwk(key: SigningKey | EncryptionKey) -> dict[str, str]:
    """The private JWK, to hand a key to another library in interop tests."""
    return {**key.public.jwk, "d": b64u_encode(key.private_key.private_bytes_raw())}
