"""Crafting hostile JOSE: raw compact tokens, re-signed payloads, mangled JWEs.

Everything here builds bytes by hand (no JOSE library on the signing side), so a test can
sign exactly the header and payload bytes it means, duplicates and escapes included.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization

from broker.crypto import envelope as env
from broker.crypto.keys import EncryptionKey, SigningKey, b64u_decode, b64u_encode

Json = dict[str, Any]


def b64(data: bytes | str) -> str:
    return b64u_encode(data.encode("utf-8") if isinstance(data, str) else data)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def raw(value: bytes | Json | list[Any] | str) -> bytes:
    """Bytes of a JSON member: bytes pass through unchanged (to keep duplicates and escapes)."""
    return value if isinstance(value, bytes) else dumps(value)


def compact(
    header: bytes | Json,
    payload: bytes | Json | list[Any] | str,
    signer: SigningKey | None = None,
    *,
    signature: bytes | None = None,
) -> str:
    """A compact JWS over exactly these header and payload bytes."""
    signing_input = f"{b64(raw(header))}.{b64(raw(payload))}"
    if signature is None:
        signature = signer.sign(signing_input.encode("ascii")) if signer is not None else b""
    return f"{signing_input}.{b64(signature)}"


def hs256(header: Json, payload: Json, secret: bytes) -> str:
    """HS256 with `secret` as the HMAC key (the algorithm-confusion attack)."""
    signing_input = f"{b64(dumps(header))}.{b64(dumps(payload))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def split(token: str) -> tuple[Json, Json, bytes]:
    h, p, s = token.split(".")
    return json.loads(b64u_decode(h)), json.loads(b64u_decode(p)), b64u_decode(s)


def public_encodings(key: SigningKey) -> dict[str, bytes]:
    """The public key as an attacker would feed it to HMAC: raw, JWK, PEM, OpenSSH."""
    pub = key.private_key.public_key()
    return {
        "raw": pub.public_bytes_raw(),
        "jwk": dumps(key.public.jwk),
        "pem": pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": pub.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
    }


# X25519 small-order u-coordinates (RFC 7748 section 7 / libsodium's blocklist).
_P = 2**255 - 19
SMALL_ORDER_U = {
    "zero": 0,
    "one": 1,
    "order8": 325606250916557431795983626356110631294008115727848805560023387167927233504,
    "p-1": _P - 1,
    "p": _P,
}


def u_bytes(u: int, high_bit: bool = False) -> bytes:
    data = bytearray(u.to_bytes(32, "little"))
    if high_bit:
        data[31] |= 0x80
    return bytes(data)


BOMB_BYTES = 100 << 20


@cache
def deflate_bomb_jwe(entry_kid: str) -> Json:
    """A JWE with `zip: DEF` whose plaintext inflates from ~100 KB to 100 MB.

    Encrypted once per kid to a throwaway key: the broker refuses `zip` before it looks at
    which key an entry names, and never unwraps or inflates anything.
    """
    protected = '{"enc":"A256GCM","cty":"alert+jws","zip":"DEF"}'
    jwe = env._encrypt(b"A" * BOMB_BYTES, [_BOMB_KEY.public], protected=protected)
    jwe["recipients"][0]["header"]["kid"] = entry_kid
    return jwe


_BOMB_KEY = EncryptionKey.generate()


@dataclass
class Forge:
    """Envelopes from a focal point of the world, valid unless told otherwise."""

    signer: SigningKey
    enc_keys: dict[str, EncryptionKey]
    routing: Json
    body: Json = field(default_factory=lambda: {"title": "t", "summary": "s", "subjects": []})

    @property
    def header(self) -> Json:
        return {"alg": "Ed25519", "kid": self.signer.kid, "typ": env.TYP_OUTER}

    def jwe(self, recipients: list[str] | None = None) -> Json:
        keys = [self.enc_keys[r].public for r in (recipients or self.routing["recipients"])]
        return env._encrypt(b"inner.jws.placeholder", keys)

    def payload(self, **changes: Any) -> Json:
        payload = {"routing": copy.deepcopy(self.routing), "jwe": self.jwe()}
        payload.update(changes)
        return payload

    def envelope(self) -> str:
        """A genuine envelope (inner JWS, JWE to every recipient, outer JWS)."""
        keys = {r: self.enc_keys[r].public for r in self.routing["recipients"]}
        return env.build_envelope(self.routing, self.body, self.signer, keys)

    def sign(
        self,
        payload: bytes | Json | list[Any] | str | None = None,
        *,
        header: bytes | Json | None = None,
        signer: SigningKey | None = None,
    ) -> str:
        return compact(
            self.header if header is None else header,
            self.payload() if payload is None else payload,
            signer or self.signer,
        )

    def with_header(self, **changes: Any) -> str:
        header = {**self.header, **changes}
        for name in [k for k, v in changes.items() if v is Ellipsis]:
            del header[name]
        return self.sign(header=header)

    def with_jwe(self, mutate: Any) -> str:
        payload = self.payload()
        mutate(payload["jwe"])
        return self.sign(payload)

    def with_entry(self, mutate: Any) -> str:
        return self.with_jwe(lambda jwe: mutate(jwe["recipients"][0]))

    def with_routing_bytes(self, routing_json: bytes) -> str:
        jwe = dumps(self.jwe())
        return self.sign(b'{"routing":' + routing_json + b',"jwe":' + jwe + b"}")


def std_alphabet(segment: str) -> str:
    return segment.replace("-", "+").replace("_", "/")


def non_canonical_tail(segment: str) -> str:
    """Set the unused low bits of the last base64url character (same bytes, other string)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 0x0F, 3: 0x03}[len(segment) % 4]
    last = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[last | unused]


def std_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
