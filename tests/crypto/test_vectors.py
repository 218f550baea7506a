"""Public vectors through our key and verification code: RFC 8037 and RFC 7520 (the JOSE
cookbook) and Wycheproof Ed25519 and X25519. They live in `../shared/vectors`, outside the
project; without them these tests skip, except under CI=true, where they fail.
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK

from broker.crypto.envelope import TYP_ACK, check_jwe_structure, verify_compact
from broker.crypto.errors import BadSignature
from broker.crypto.keys import (
    EncryptionKey,
    SigningKey,
    b64u_decode,
    b64u_encode,
    is_small_order,
    parse_public_jwk,
    thumbprint,
)
from tests.crypto.envelope_world import SHARED_VECTORS, party, raises, vectors

COOKBOOK = SHARED_VECTORS / "jose-cookbook"


def load(path: str) -> Any:
    return json.loads(vectors(path).read_text())


def cookbook_files(pattern: str, output: str | None = None) -> list[str]:
    """Cookbook examples (with that output serialization), as paths for `load`."""
    found = sorted(
        p.relative_to(SHARED_VECTORS).as_posix()
        for p in COOKBOOK.glob(pattern)
        if output is None or output in json.loads(p.read_text()).get("output", {})
    )
    # When shared/ is absent, one placeholder case reaches vectors(), which skips or fails.
    return found or [f"jose-cookbook/{pattern}"]


def jwks_in(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "kty" in value:
            yield value
        for child in value.values():
            yield from jwks_in(child)
    elif isinstance(value, list):
        for child in value:
            yield from jwks_in(child)


class TestRfc8037:
    """RFC 8037 appendix A, as published in the cookbook's curve25519/ folder."""

    def test_ed25519_key_thumbprint_and_signature(self) -> None:
        case = load("jose-cookbook/curve25519/jws.json")
        key = case["input"]["key"]
        public = {k: key[k] for k in ("kty", "crv", "x", "use")}
        # RFC 8037 section A.3.
        assert parse_public_jwk(public).kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        signer = SigningKey.from_seed(b64u_decode(key["d"]))
        assert signer.public.x == key["x"]
        signing_input = case["signing"]["sig-input"].encode()
        signature = b64u_decode(case["signing"]["sig"])
        assert signer.sign(signing_input) == signature  # Ed25519 is deterministic
        signer.public.verify(signature, signing_input)
        with raises("envelope.bad_signature"):
            signer.public.verify(signature, signing_input + b".")

    def test_ed25519_token_is_outside_our_profile(self) -> None:
        """The RFC token has neither kid nor typ; the allowlist refuses it."""
        case = load("jose-cookbook/curve25519/jws.json")
        public = {k: case["input"]["key"][k] for k in ("kty", "crv", "x", "use")}
        with raises("envelope.typ_mismatch"):
            verify_compact(case["output"]["compact"], public, TYP_ACK)

    def test_x25519_key_decrypts_the_ecdh_es_vector(self) -> None:
        case = load("jose-cookbook/curve25519/ecdh-es.json")
        key = case["input"]["key"]
        ours = EncryptionKey.from_seed(b64u_decode(key["d"]))
        assert ours.public.x == key["x"]
        assert ours.kid == JWK(**key).thumbprint()
        epk = b64u_decode(case["encrypting_content"]["protected"]["epk"]["x"])
        assert not is_small_order(epk, "X25519")
        token = JWE()
        token.deserialize(case["output"]["compact"], key=JWK.from_pyca(ours.private_key))
        assert token.payload.decode() == case["input"]["plaintext"]

    def test_ecdh_es_direct_is_outside_our_profile(self) -> None:
        case = load("jose-cookbook/curve25519/ecdh-es.json")
        with raises("envelope.jwe_structure"):
            check_jwe_structure(case["output"]["json"], {})


class TestRfc7520:
    @pytest.mark.parametrize("path", cookbook_files("**/*.json"))
    def test_thumbprints_agree_with_jwcrypto(self, path: str) -> None:
        keys = list(jwks_in(load(path)))
        for key in keys:
            assert thumbprint(key) == JWK(**key).thumbprint(), key.get("kid")

    @pytest.mark.parametrize("path", cookbook_files("jws/*.json", output="compact"))
    def test_jws_algorithms_refused(self, path: str) -> None:
        """RS256, PS384, ES512 and HS256 tokens never reach signature verification."""
        with raises("envelope.alg_not_allowed"):
            verify_compact(load(path)["output"]["compact"], party("VN-GDC").sig_jwk(), TYP_ACK)

    def test_nested_jwt_refused(self) -> None:
        case = load("jose-cookbook/6.nesting_signatures_and_encryption.json")
        with raises("envelope.alg_not_allowed"):
            verify_compact(case["sign"]["output"]["compact"], party("VN-GDC").sig_jwk(), TYP_ACK)

    @pytest.mark.parametrize("path", cookbook_files("jwe/*.json"))
    def test_jwe_outside_our_profile_refused(self, path: str) -> None:
        """Including 5.13 (General JSON, three recipients) and 5.9 (compressed: zip)."""
        general = load(path)["output"]["json"]
        protected = json.loads(b64u_decode(general["protected"])) if "protected" in general else {}
        zipped = "zip" in protected and general.keys() == {
            "protected",
            "iv",
            "ciphertext",
            "tag",
            "recipients",
        }
        with raises("envelope.zip_forbidden" if zipped else "envelope.jwe_structure"):
            check_jwe_structure(general, {})

    def test_multi_recipient_own_entry_selection(self) -> None:
        """5.13: decrypting with only the ECDH-ES+A256KW entry works, as our recipients do."""
        case = load("jose-cookbook/jwe/5_13.encrypting_to_multiple_recipients.json")
        general = case["output"]["json"]
        ec_key = JWK(**case["input"]["key"][1])
        entry = next(r for r in general["recipients"] if r["header"]["kid"] == ec_key["kid"])
        single = {k: v for k, v in general.items() if k != "recipients"} | entry
        token = JWE()
        token.allowed_algs = ["ECDH-ES+A256KW", "A128CBC-HS256"]
        token.deserialize(json.dumps(single), key=ec_key)
        assert token.payload.decode() == case["input"]["plaintext"]


class TestWycheproof:
    def test_ed25519(self) -> None:
        suite = load("wycheproof/ed25519_test.json")
        wrong, checked = [], 0
        for group in suite["testGroups"]:
            jwk = {**group["publicKeyJwk"], "use": "sig"}
            del jwk["kid"]  # "none" in the file, not a thumbprint
            key = parse_public_jwk(jwk)
            for case in group["tests"]:
                checked += 1
                try:
                    key.verify(bytes.fromhex(case["sig"]), bytes.fromhex(case["msg"]))
                    accepted = True
                except BadSignature:
                    accepted = False
                if accepted != (case["result"] == "valid"):
                    wrong.append((case["tcId"], case["result"], case["flags"]))
        assert checked == suite["numberOfTests"]
        assert wrong == []

    def test_x25519(self) -> None:
        suite = load("wycheproof/x25519_test.json")
        wrong, zero = [], 0
        for case in (c for g in suite["testGroups"] for c in g["tests"]):
            public = bytes.fromhex(case["public"])
            ours = EncryptionKey.from_seed(bytes.fromhex(case["private"]))
            jwk = {"kty": "OKP", "crv": "X25519", "use": "enc", "x": b64u_encode(public)}
            if case["shared"] == "00" * 32:
                zero += 1
                # Our table must catch every all-zero case, and `cryptography` refuses them too.
                with raises("key.low_order"):
                    parse_public_jwk(jwk)
                with pytest.raises(ValueError, match="shared key"):
                    ours.private_key.exchange(X25519PublicKey.from_public_bytes(public))
                continue
            parse_public_jwk(jwk)  # no false alarm on twist, non-canonical or edge points
            shared = ours.private_key.exchange(X25519PublicKey.from_public_bytes(public))
            if shared.hex() != case["shared"] or case["result"] == "invalid":
                wrong.append((case["tcId"], case["result"], case["flags"]))
        assert zero == sum(
            "ZeroSharedSecret" in c["flags"] for g in suite["testGroups"] for c in g["tests"]
        )
        assert wrong == []
