"""Alert envelopes (PROTOCOL.md section 4): inner JWS, multi-recipient JWE, outer JWS.

The sender signs the alert (inner JWS, `alert+jws`), encrypts that token to every recipient
agency (JWE General JSON, ECDH-ES+A256KW with X25519, A256GCM) and signs the cleartext routing
together with the JWE (outer JWS, `alert-envelope+jws`). The broker checks the outer layer and
the JWE's shape without decrypting; each recipient decrypts only its own JWE entry and checks
that the inner statement matches the routing it was delivered under.

Compact JWS is written and checked here with `cryptography` directly. It is three base64url
segments, and doing it ourselves pins the exact header bytes we emit, verifies the *received*
signing input without re-serializing, and keeps the allowlist in one place. The JWE layer
goes through jwcrypto, which handles the received protected header correctly (joserfc 1.8.0
does not; research/crypto-design.md section 2.2).
"""

import functools
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from broker.crypto import strictjson
from broker.crypto.errors import (
    AlgNotAllowed,
    BadKid,
    BadPayload,
    DecryptFailed,
    HeaderForbidden,
    HeaderUnknown,
    IatTooLate,
    JweRecipientsMismatch,
    JweStructure,
    KidMismatch,
    LowOrderEpk,
    Malformed,
    NotAddressedToUs,
    RoutingMismatch,
    SenderMismatch,
    TooLarge,
    TypMismatch,
    ZipForbidden,
)
from broker.crypto.keys import (
    ENC_ALG,
    KID_PATTERN,
    SIG_ALG,
    EncryptionKey,
    PublicJWK,
    SigningKey,
    b64u_check,
    b64u_decode,
    b64u_encode,
    check_valid_at,
    is_small_order,
    parse_public_jwk,
)

TYP_INNER = "alert+jws"
TYP_OUTER = "alert-envelope+jws"
TYP_RECEIPT = "broker-receipt+jws"
TYP_ACK = "ack+jws"
TYP_DIRECTORY = "key-directory+jws"
TYP_RECALL = "recall+jws"
TYP_RECALL_COMPLIANCE = "recall-compliance+jws"
TYP_AGREEMENT_APPROVAL = "agreement-approval+jws"

# `EdDSA` is accepted from partners whose stack predates RFC 9864; the key is always OKP
# Ed25519 (parse_public_jwk), so both names mean the same algorithm here.
SIG_ALGS = frozenset({SIG_ALG, "EdDSA"})
CONTENT_ENC = "A256GCM"
JWE_PROTECTED = '{"enc":"A256GCM","cty":"alert+jws"}'
MAX_ENVELOPE_BYTES = 1 << 20
MAX_HEADER_BYTES = 1024
MAX_RECIPIENTS = 64
MAX_IAT_SKEW_SECONDS = 120

_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_FORBIDDEN_MEMBERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit", "b64"})
_MAX_HEADER_B64 = (MAX_HEADER_BYTES * 4 + 2) // 3
_JWE_MEMBERS = frozenset({"protected", "iv", "ciphertext", "tag", "recipients"})
_JWE_PROTECTED_B64 = b64u_encode(JWE_PROTECTED.encode("ascii"))
_JWE_PROTECTED_OBJECT = json.loads(JWE_PROTECTED)
_ENTRY_MEMBERS = frozenset({"header", "encrypted_key"})
_ENTRY_HEADER_MEMBERS = frozenset({"alg", "kid", "epk"})
_EPK_MEMBERS = frozenset({"kty", "crv", "x"})
_INNER_MEMBERS = frozenset({"mid", "iat", "sender", "recipients", "routing", "body"})
_BOUND_FIELDS = ("mid", "iat", "sender", "recipients")
_WRAPPED_CEK_BYTES = 40  # a 32-byte A256GCM key after AES key wrap (RFC 3394)

SigKey = PublicJWK | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class OuterPayload:
    """The verified outer layer: signer kid, cleartext routing and the JWE (General JSON)."""

    kid: str
    routing: dict[str, Any]
    jwe: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OpenedAlert:
    """A decrypted and fully verified alert, with the evidence to keep (PROTOCOL 4.5 step 8)."""

    routing: dict[str, Any]
    body: dict[str, Any]
    sender_kid: str
    enc_kid: str
    inner_jws: str
    outer_jws: str


# --- compact JWS ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compact:
    kid: str
    signing_input: bytes
    payload_b64: str
    signature: bytes


def _check_header(header: Any, typ: str) -> str:
    if not isinstance(header, dict):
        raise Malformed("the protected header is not a JSON object")
    # In a fixed order, so that a header with several problems always gets the same code.
    extra = header.keys() - _HEADER_MEMBERS
    if "zip" in extra:
        raise ZipForbidden()
    if forbidden := sorted(extra & _FORBIDDEN_MEMBERS):
        raise HeaderForbidden(f"forbidden header member(s) {forbidden}")
    if extra:
        raise HeaderUnknown(f"header member(s) {sorted(extra)} not allowed")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SIG_ALGS:
        raise AlgNotAllowed(f"alg {alg!r} is not allowed")
    if header.get("typ") != typ:
        raise TypMismatch(f"typ must be {typ!r}, not {header.get('typ')!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise BadKid()
    return kid


def _split(token: str, typ: str, max_size: int) -> _Compact:
    """PROTOCOL 4.4 steps 1-2: limits, three segments, header allowlist."""
    if not isinstance(token, str):
        raise Malformed("a compact JWS is a string")
    if len(token) > max_size:
        raise TooLarge(f"token of {len(token)} bytes exceeds {max_size}")
    segments = token.split(".")
    if len(segments) != 3:
        raise Malformed("a compact JWS has exactly 3 segments")
    header_b64, payload_b64, signature_b64 = segments
    if len(header_b64) > _MAX_HEADER_B64:
        raise TooLarge(f"protected header exceeds {MAX_HEADER_BYTES} bytes")
    header = strictjson.loads(b64u_decode(header_b64), max_bytes=MAX_HEADER_BYTES, max_depth=4)
    kid = _check_header(header, typ)
    try:
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
    except UnicodeEncodeError as exc:
        raise Malformed("a compact JWS is ASCII") from exc
    return _Compact(kid, signing_input, payload_b64, b64u_decode(signature_b64))


def _sig_key(key: SigKey) -> PublicJWK:
    return key if isinstance(key, PublicJWK) else parse_public_jwk(key, use="sig")


def _verify(token: _Compact, key: PublicJWK) -> Any:
    """PROTOCOL 4.4 steps 4-5: the signature over the received bytes, then a strict parse."""
    if token.kid != key.kid:
        raise KidMismatch(f"token kid {token.kid} is not the key {key.kid}")
    key.verify(token.signature, token.signing_input)
    return strictjson.loads(b64u_decode(token.payload_b64))


def sign_compact(payload: Mapping[str, Any], signer: SigningKey, typ: str) -> str:
    """JWS Compact with header exactly {"alg":"Ed25519","kid":...,"typ":...}."""
    header = b64u_encode(strictjson.dumps({"alg": SIG_ALG, "kid": signer.kid, "typ": typ}))
    signing_input = f"{header}.{b64u_encode(strictjson.dumps(payload))}"
    return f"{signing_input}.{b64u_encode(signer.sign(signing_input.encode('ascii')))}"


def verify_compact(
    token: str, public_jwk: SigKey, typ: str, *, max_size: int = MAX_ENVELOPE_BYTES
) -> dict[str, Any]:
    """Verify a JWS Compact of the given `typ` and return its JSON object payload."""
    payload = _verify(_split(token, typ, max_size), _sig_key(public_jwk))
    if not isinstance(payload, dict):
        raise BadPayload("the payload is not a JSON object")
    return payload


# --- broker side ----------------------------------------------------------------------------


SplitToken = _Compact  # a compact JWS whose limits and header were checked, not yet verified


def parse_outer_header(envelope: str, max_size: int = MAX_ENVELOPE_BYTES) -> str:
    """Check limits and the outer header (PROTOCOL 4.4 steps 1-2); return the signer's kid."""
    return _split(envelope, TYP_OUTER, max_size).kid


def split_outer(envelope: str, max_size: int = MAX_ENVELOPE_BYTES) -> SplitToken:
    """PROTOCOL 4.4 steps 1-2, once: pass the result to `verify_outer` (its `kid` is the signer)."""
    return _split(envelope, TYP_OUTER, max_size)


def verify_outer(
    envelope: str | SplitToken, public_sig_jwk: SigKey, *, max_size: int = MAX_ENVELOPE_BYTES
) -> OuterPayload:
    """Verify the outer signature and parse its payload (PROTOCOL 4.4 steps 1-5)."""
    token = envelope if isinstance(envelope, _Compact) else _split(envelope, TYP_OUTER, max_size)
    payload = _verify(token, _sig_key(public_sig_jwk))
    if not isinstance(payload, dict) or payload.keys() != {"routing", "jwe"}:
        raise BadPayload("the outer payload must have exactly the members routing and jwe")
    routing, jwe = payload["routing"], payload["jwe"]
    if not isinstance(routing, dict) or not isinstance(jwe, dict):
        raise BadPayload("routing and jwe must be JSON objects")
    return OuterPayload(token.kid, routing, jwe)


def _fixed(value: Any, size: int, what: str) -> None:
    if len(b64u_decode(value, JweStructure)) != size:
        raise JweStructure(f"{what} must be {size} bytes")


def _jwe_entries(jwe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Check everything about the JWE that needs no key; return its recipient entries."""
    if not isinstance(jwe, Mapping) or jwe.keys() != _JWE_MEMBERS:
        raise JweStructure(f"a JWE must have exactly the members {sorted(_JWE_MEMBERS)}")
    # Our own producers emit exactly JWE_PROTECTED; others may differ in spacing or order.
    if jwe["protected"] != _JWE_PROTECTED_B64:
        protected = strictjson.loads(
            b64u_decode(jwe["protected"], JweStructure), max_bytes=MAX_HEADER_BYTES
        )
        if isinstance(protected, dict) and "zip" in protected:
            raise ZipForbidden()
        if protected != _JWE_PROTECTED_OBJECT:
            raise JweStructure(f"the protected header must be exactly {JWE_PROTECTED}")
    _fixed(jwe["iv"], 12, "iv")
    _fixed(jwe["tag"], 16, "tag")
    # Checked, not decoded: the broker never needs the ciphertext bytes.
    b64u_check(jwe["ciphertext"], JweStructure)
    if not jwe["ciphertext"]:
        raise JweStructure("empty ciphertext")
    entries = jwe["recipients"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_RECIPIENTS:
        raise JweStructure(f"recipients must be a list of 1 to {MAX_RECIPIENTS} entries")
    for entry in entries:
        header = entry.get("header") if isinstance(entry, dict) else None
        if not isinstance(header, dict) or entry.keys() != _ENTRY_MEMBERS:
            raise JweStructure("an entry has exactly the members header and encrypted_key")
        if "zip" in header:
            raise ZipForbidden()
        if header.keys() != _ENTRY_HEADER_MEMBERS:
            raise JweStructure("an entry header has exactly the members alg, kid and epk")
        if header["alg"] != ENC_ALG:
            raise AlgNotAllowed(f"JWE alg {header['alg']!r} is not allowed")
        if not isinstance(header["kid"], str) or not KID_PATTERN.fullmatch(header["kid"]):
            raise BadKid("a JWE entry kid is not an RFC 7638 thumbprint")
        epk = header["epk"]
        if not isinstance(epk, dict) or epk.keys() != _EPK_MEMBERS:
            raise JweStructure("epk must have exactly the members kty, crv and x")
        if epk["kty"] != "OKP" or epk["crv"] != "X25519":
            raise JweStructure("epk must be an OKP X25519 key")
        if len(epk_x := b64u_decode(epk["x"], JweStructure)) != 32:
            raise JweStructure("epk x must be 32 bytes")
        # Checked here, not left to the recipient's ECDH: a table lookup per entry costs the
        # broker nothing and refuses the envelope before it is stored and fanned out.
        if is_small_order(epk_x, "X25519"):
            raise LowOrderEpk()
        _fixed(entry["encrypted_key"], _WRAPPED_CEK_BYTES, "encrypted_key")
    return entries


def check_jwe_structure(
    jwe: Mapping[str, Any], expected_enc_kids: Mapping[str, Collection[str]]
) -> dict[str, str]:
    """PROTOCOL 4.4 step 10: shape, and one entry per recipient with one of its valid kids.

    `expected_enc_kids` maps each agency in routing.recipients to the kids of its currently
    valid encryption keys. Returns the kid used for each agency.
    """
    agency_of = {kid: agency for agency, kids in expected_enc_kids.items() for kid in kids}
    used: dict[str, str] = {}
    for entry in _jwe_entries(jwe):
        kid = entry["header"]["kid"]
        agency = agency_of.get(kid)
        if agency is None:
            raise JweRecipientsMismatch(f"entry kid {kid} is not a valid key of a recipient")
        if agency in used:
            raise JweRecipientsMismatch(f"more than one entry for {agency}")
        used[agency] = kid
    if missing := sorted(expected_enc_kids.keys() - used.keys()):
        raise JweRecipientsMismatch(f"no entry for {missing}")
    return used


# --- sender side ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _jwcrypto_public(x: str) -> JWK:
    return JWK(kty="OKP", crv="X25519", x=x, use="enc")


def _enc_key(key: PublicJWK | Mapping[str, Any]) -> PublicJWK:
    return key if isinstance(key, PublicJWK) else parse_public_jwk(key, use="enc")


def _recipients(routing: Mapping[str, Any]) -> list[str]:
    recipients = routing.get("recipients")
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise BadPayload("routing.recipients must be a list of agency ids")
    return recipients


def build_envelope(
    routing: Mapping[str, Any],
    body: Mapping[str, Any],
    signer: SigningKey,
    recipient_keys: Mapping[str, PublicJWK | Mapping[str, Any]],
) -> str:
    """Sign, encrypt to each recipient's encryption key and sign again (PROTOCOL 4.2)."""
    recipients = _recipients(routing)
    if not recipients or recipients != sorted(set(recipients)):
        raise BadPayload("routing.recipients must be non-empty, unique and sorted")
    if missing := [name for name in _BOUND_FIELDS if name not in routing]:
        raise BadPayload(f"routing lacks {missing}")
    if recipient_keys.keys() != set(recipients):
        raise JweRecipientsMismatch("recipient_keys must cover exactly routing.recipients")
    inner_payload = {name: routing[name] for name in _BOUND_FIELDS}
    inner = sign_compact({**inner_payload, "routing": routing, "body": body}, signer, TYP_INNER)
    keys = [_enc_key(recipient_keys[agency]) for agency in recipients]
    jwe = _encrypt(inner.encode("ascii"), keys)
    return sign_compact({"routing": routing, "jwe": jwe}, signer, TYP_OUTER)


def _encrypt(
    plaintext: bytes, keys: Sequence[PublicJWK], protected: str = JWE_PROTECTED
) -> dict[str, Any]:
    """JWE General JSON to `keys`, in their order, members in the order of PROTOCOL 4.2."""
    # flattened=False keeps General JSON even for a single recipient; the protected header is
    # passed as a string so that jwcrypto uses these exact bytes (joserfc needs them compact).
    jwe = JWE(plaintext, protected=protected, flattened=False)
    jwe.allowed_algs = [ENC_ALG, CONTENT_ENC]
    for key in keys:
        jwe.add_recipient(_jwcrypto_public(key.x), header={"alg": ENC_ALG, "kid": key.kid})
    made = json.loads(jwe.serialize())
    return {
        "protected": made["protected"],
        "iv": made["iv"],
        "ciphertext": made["ciphertext"],
        "tag": made["tag"],
        "recipients": [
            {"header": r["header"], "encrypted_key": r["encrypted_key"]} for r in made["recipients"]
        ],
    }


# --- recipient side -------------------------------------------------------------------------


def _decrypt(jwe: Mapping[str, Any], entry: Mapping[str, Any], key: EncryptionKey) -> str:
    # Only our entry goes to jwcrypto: with the whole token it would try every entry
    # (O(n) ECDH) and a failure in another agency's entry would be none of our business.
    single = {name: jwe[name] for name in ("protected", "iv", "ciphertext", "tag")}
    single.update(header=entry["header"], encrypted_key=entry["encrypted_key"])
    token = JWE()
    token.allowed_algs = [ENC_ALG, CONTENT_ENC]
    try:
        token.deserialize(json.dumps(single))
        token.decrypt(JWK.from_pyca(key.private_key))
        plaintext: bytes = token.payload
        return plaintext.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Malformed("the JWE plaintext is not a compact JWS") from exc
    except Exception as exc:  # jwcrypto raises assorted types; all mean "does not decrypt"
        raise DecryptFailed() from exc


def _check_inner(inner: Any, routing: Mapping[str, Any], my_agency: str) -> dict[str, Any]:
    """PROTOCOL 4.5 step 6: the signed statement matches the routing it came under."""
    if not isinstance(inner, dict) or inner.keys() != _INNER_MEMBERS:
        raise BadPayload(f"the inner payload must have exactly the members {_INNER_MEMBERS}")
    for name in _BOUND_FIELDS:
        if not strictjson.canonical_equal(inner[name], routing.get(name)):
            raise RoutingMismatch(f"inner {name} differs from the routing")
    if not strictjson.canonical_equal(inner["routing"], routing):
        raise RoutingMismatch("inner routing differs from the outer routing")
    # Implied by the equalities above and the addressing step; kept because it is the
    # property that defeats forwarding, and must survive any refactoring of those checks.
    if my_agency not in inner["recipients"]:
        raise NotAddressedToUs("the sender did not address the alert to us")
    if not isinstance(inner["body"], dict):
        raise BadPayload("body must be a JSON object")
    return inner["body"]


def open_envelope(
    envelope: str,
    *,
    my_agency: str,
    my_enc_keys: Sequence[EncryptionKey],
    sender_sig_jwk: SigKey,
    at: datetime | int | None = None,
    max_size: int = MAX_ENVELOPE_BYTES,
) -> OpenedAlert:
    """Verify and decrypt an envelope addressed to `my_agency` (PROTOCOL 4.5 steps 3-7).

    `sender_sig_jwk` is the directory entry for the outer kid. `at` is the log leaf time: when
    given, the sender key must have been valid then (its NumericDate nbf, exp, revoked_at and
    compromised_since members) and `iat` may not be later than `at` plus the allowed skew.
    Deduplication on (sender, mid) is the caller's (it needs storage).
    """
    # 3. Outer layer, with the key as it was at the log time.
    sender_key = _sig_key(sender_sig_jwk)
    if at is not None:
        check_valid_at(sender_key, at)
    outer = verify_outer(envelope, sender_key, max_size=max_size)
    routing = outer.routing
    owner = sender_key.meta.get("agency")
    if owner is not None and routing.get("sender") != owner:
        raise SenderMismatch(f"routing.sender is not {owner}, the owner of key {outer.kid}")
    # 4. Addressing: we are a recipient, and exactly one entry carries one of our kids.
    if my_agency not in _recipients(routing):
        raise NotAddressedToUs(f"{my_agency} is not in routing.recipients")
    mine = {key.kid: key for key in my_enc_keys}
    entries = [e for e in _jwe_entries(outer.jwe) if e["header"]["kid"] in mine]
    if len(entries) != 1:
        raise NotAddressedToUs(f"{len(entries)} JWE entries carry one of our kids, not 1")
    enc_kid = entries[0]["header"]["kid"]
    # 5. Decrypt our entry only.
    inner_jws = _decrypt(outer.jwe, entries[0], mine[enc_kid])
    # 6. Inner layer: same signer, then the signature, then the binding to the routing.
    inner_token = _split(inner_jws, TYP_INNER, max_size)
    if inner_token.kid != outer.kid:
        raise KidMismatch("inner and outer JWS have different signers")
    body = _check_inner(_verify(inner_token, sender_key), routing, my_agency)
    # 7. Replay: iat no later than the log time plus skew (deduplication is the caller's).
    if at is not None:
        log_time = int(at.timestamp()) if isinstance(at, datetime) else at
        iat = routing.get("iat")
        if not isinstance(iat, int) or iat > log_time + MAX_IAT_SKEW_SECONDS:
            raise IatTooLate(f"iat {iat!r} is after the log time {log_time} plus skew")
    return OpenedAlert(routing, body, outer.kid, enc_kid, inner_jws, envelope)


def compact_kid(token: str, typ: str, max_size: int = MAX_ENVELOPE_BYTES) -> str:
    """Check a compact JWS's limits and header allowlist for `typ`; return its kid (no verify)."""
    return _split(token, typ, max_size).kid
