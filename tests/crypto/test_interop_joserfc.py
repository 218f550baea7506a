"""Interop with joserfc, a second Python JOSE implementation: it opens what we build, and we
open what it builds, for 1 and 26 recipients.

joserfc needs three settings (research/ecosystem.md, gotcha 2): `Ed25519` is not in its
default JWS algorithms, its JWE registry caps recipients at 16, and with
`verify_all_recipients=True` it wants a key for every entry.
"""

import json
from typing import Any

import pytest
from joserfc import jwe, jws
from joserfc.errors import DecodeError, SecurityWarning
from joserfc.jwe import GeneralJSONEncryption, JWERegistry
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from broker.crypto.envelope import JWE_PROTECTED, TYP_INNER, TYP_OUTER
from tests.crypto.envelope_world import (
    AGENCIES_26,
    BODY,
    SENDER,
    build,
    encrypt,
    inner_of,
    open_as,
    party,
    private_jwk,
    routing,
)

SIG = JWSRegistry(algorithms=["Ed25519"])
ENC = JWERegistry(
    algorithms=["ECDH-ES+A256KW", "A256GCM"], max_recipients=32, verify_all_recipients=False
)
RECIPIENTS = pytest.mark.parametrize("recipients", [["HK-CED"], AGENCIES_26], ids=["1", "26"])


def joserfc_open(token: str, agency: str) -> dict[str, Any]:
    """Open an envelope as `agency` with joserfc only; return the inner payload."""
    sender_key = OKPKey.import_key(party(SENDER).sig.public.jwk)
    outer = jws.deserialize_compact(token, sender_key, registry=SIG)
    assert outer.protected["typ"] == TYP_OUTER
    payload = json.loads(outer.payload)
    enc_key = OKPKey.import_key(private_jwk(party(agency).enc[0]))
    # Own entry only: O(1) instead of trying every entry.
    general = dict(payload["jwe"])
    general["recipients"] = [r for r in general["recipients"] if r["header"]["kid"] == enc_key.kid]
    inner_token = jwe.decrypt_json(general, enc_key, registry=ENC).plaintext
    assert inner_token is not None
    inner = jws.deserialize_compact(inner_token, sender_key, registry=SIG)
    assert inner.protected["typ"] == TYP_INNER
    return json.loads(inner.payload)


def joserfc_build(recipients: list[str], alg: str = "Ed25519") -> str:
    """An envelope built with joserfc only, signed with `alg` on both layers."""
    registry = JWSRegistry(algorithms=[alg])
    r = routing(recipients=recipients)
    # joserfc refuses to sign EdDSA with a key whose "alg" member says Ed25519.
    signer = OKPKey.import_key({**private_jwk(party(SENDER).sig), "alg": alg})
    kid = party(SENDER).sig.kid

    def sign(payload: dict[str, Any], typ: str) -> str:
        header = {"alg": alg, "kid": kid, "typ": typ}
        return jws.serialize_compact(header, json.dumps(payload), signer, registry=registry)

    fields = {name: r[name] for name in ("mid", "iat", "sender", "recipients")}
    inner = sign({**fields, "routing": r, "body": BODY}, TYP_INNER)
    obj = GeneralJSONEncryption({"enc": "A256GCM", "cty": "alert+jws"}, inner.encode())
    for agency in recipients:
        key = party(agency).enc[0].public
        obj.add_recipient({"alg": "ECDH-ES+A256KW", "kid": key.kid}, OKPKey.import_key(key.jwk))
    general = jwe.encrypt_json(obj, None, registry=ENC)
    return sign({"routing": r, "jwe": general}, TYP_OUTER)


@RECIPIENTS
def test_joserfc_opens_ours(recipients: list[str]) -> None:
    token = build(recipients)
    for agency in {recipients[0], recipients[len(recipients) // 2], recipients[-1]}:
        inner = joserfc_open(token, agency)
        assert inner["body"] == BODY
        assert inner["routing"] == routing(recipients=recipients)


@RECIPIENTS
def test_we_open_joserfc(recipients: list[str]) -> None:
    token = joserfc_build(recipients)
    for agency in recipients:
        opened = open_as(agency, token)
        assert (opened.routing, opened.body) == (routing(recipients=recipients), BODY)


def test_we_accept_eddsa_from_joserfc() -> None:
    """A partner on the pre-RFC 9864 name; joserfc warns about it, we accept it."""
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        token = joserfc_build(["HK-CED", "KR-KCS"], alg="EdDSA")
    assert open_as("KR-KCS", token).body == BODY


def test_thumbprints_agree() -> None:
    for key in (party(SENDER).sig, party("HK-CED").enc[0]):
        assert OKPKey.import_key(key.public.jwk).thumbprint() == key.kid


def test_joserfc_still_fails_on_a_whitespace_protected_header() -> None:
    """Why producers must write the protected header compactly (research/ecosystem.md, gotcha 1).

    joserfc 1.8.0 recomputes the AAD from its own serialization of the parsed header. We
    accept this JWE (tests/crypto/test_envelope.py); if joserfc stops failing, its bug is fixed
    and the research note can say so.
    """
    spaced = '{"enc": "A256GCM", "cty": "alert+jws"}'
    assert spaced != JWE_PROTECTED
    general = encrypt(inner_of(build()), ["HK-CED"], protected=spaced)
    key = OKPKey.import_key(private_jwk(party("HK-CED").enc[0]))
    with pytest.raises(DecodeError):
        jwe.decrypt_json(general, key, registry=ENC)
