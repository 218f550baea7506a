"""Alert envelopes: the wire format, the broker's checks and the recipient's checks.

Every refusal asserts its own error code, so a check that stops working cannot hide behind
another one that happens to fire first.
"""

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.crypto import envelope
from broker.crypto.envelope import (
    JWE_PROTECTED,
    TYP_ACK,
    TYP_INNER,
    TYP_OUTER,
    TYP_RECEIPT,
    build_envelope,
    check_jwe_structure,
    open_envelope,
    parse_outer_header,
    sign_compact,
    verify_compact,
    verify_outer,
)
from broker.crypto.keys import b64u_decode, b64u_encode
from broker.errors import PROBLEMS
from tests.crypto.envelope_world import (
    AGENCIES_26,
    BODY,
    SENDER,
    build,
    compact,
    enc_keys,
    encrypt,
    header,
    inner_of,
    open_as,
    outer_payload,
    party,
    raises,
    routing,
    seal,
)

VN = party(SENDER)
TWO = ("HK-CED", "KR-KCS")


def decoded(segment: str) -> Any:
    return json.loads(b64u_decode(segment))


def kids(recipients: tuple[str, ...] | list[str]) -> dict[str, set[str]]:
    """What the directory says: each recipient's valid encryption keys (current and previous)."""
    return {a: {k.kid for k in party(a).enc} for a in recipients}


class TestBuild:
    @pytest.mark.parametrize("recipients", [["HK-CED"], AGENCIES_26], ids=["1", "26"])
    def test_layers(self, recipients: list[str]) -> None:
        token = build(recipients)
        h, p, _ = token.split(".")
        assert b64u_decode(h) == (
            b'{"alg":"Ed25519","kid":"%s","typ":"alert-envelope+jws"}' % VN.sig.kid.encode()
        )
        outer = decoded(p)
        assert list(outer) == ["routing", "jwe"]
        assert outer["routing"] == routing(recipients=recipients)
        jwe = outer["jwe"]
        assert list(jwe) == ["protected", "iv", "ciphertext", "tag", "recipients"]
        assert b64u_decode(jwe["protected"]) == b'{"enc":"A256GCM","cty":"alert+jws"}'
        assert [e["header"]["kid"] for e in jwe["recipients"]] == [
            party(a).enc[0].kid for a in recipients
        ]
        for entry in jwe["recipients"]:
            assert list(entry) == ["header", "encrypted_key"]
            assert entry["header"]["alg"] == "ECDH-ES+A256KW"
            assert set(entry["header"]["epk"]) == {"kty", "crv", "x"}
        assert check_jwe_structure(jwe, kids(recipients)) == {
            a: party(a).enc[0].kid for a in recipients
        }

    def test_inner_layer(self) -> None:
        inner = inner_of(build(TWO))
        h, p, _ = inner.split(".")
        assert b64u_decode(h) == b'{"alg":"Ed25519","kid":"%s","typ":"alert+jws"}' % (
            VN.sig.kid.encode()
        )
        payload = decoded(p)
        r = routing(recipients=TWO)
        assert payload == {
            "mid": r["mid"],
            "iat": r["iat"],
            "sender": SENDER,
            "recipients": list(TWO),
            "routing": r,
            "body": BODY,
        }

    def test_every_one_of_26_opens(self) -> None:
        token = build(AGENCIES_26)
        for agency in AGENCIES_26:
            opened = open_as(agency, token)
            assert opened.body == BODY
            assert opened.enc_kid == party(agency).enc[0].kid

    def test_fresh_ephemeral_keys_and_iv(self) -> None:
        a, b = (outer_payload(build(TWO))["jwe"] for _ in range(2))
        assert a["iv"] != b["iv"]
        epks = {e["header"]["epk"]["x"] for jwe in (a, b) for e in jwe["recipients"]}
        assert len(epks) == 4

    @pytest.mark.parametrize(
        ("recipients", "code"),
        [
            (["KR-KCS", "HK-CED"], "envelope.bad_payload"),
            (["HK-CED", "HK-CED"], "envelope.bad_payload"),
            ([], "envelope.bad_payload"),
            ("HK-CED", "envelope.bad_payload"),
        ],
    )
    def test_refuses_bad_recipients(self, recipients: Any, code: str) -> None:
        r = {**routing(), "recipients": recipients}
        with raises(code):
            build_envelope(r, BODY, VN.sig, enc_keys(["HK-CED"]))

    def test_refuses_keys_not_matching_recipients(self) -> None:
        with raises("envelope.jwe_recipients_mismatch"):
            build_envelope(routing(recipients=TWO), BODY, VN.sig, enc_keys(["HK-CED"]))

    def test_refuses_sig_key_as_recipient(self) -> None:
        with raises("key.wrong_use"):
            build_envelope(routing(), BODY, VN.sig, {"HK-CED": party("HK-CED").sig.public.jwk})

    def test_refuses_routing_without_mid(self) -> None:
        r = routing()
        del r["mid"]
        with raises("envelope.bad_payload"):
            build_envelope(r, BODY, VN.sig, enc_keys(["HK-CED"]))

    def test_refuses_body_outside_i_json(self) -> None:
        with raises("envelope.not_i_json"):
            build(body={"count": 2**60})


class TestOuterHeader:
    """PROTOCOL 4.4 steps 1-2, before any key lookup."""

    PAYLOAD = json.dumps({"routing": routing(), "jwe": {}}).encode()

    def test_returns_kid(self) -> None:
        assert parse_outer_header(build()) == VN.sig.kid

    @pytest.mark.parametrize(
        ("over", "code"),
        [
            ({"alg": "none"}, "envelope.alg_not_allowed"),
            ({"alg": "HS256"}, "envelope.alg_not_allowed"),
            ({"alg": "RS256"}, "envelope.alg_not_allowed"),
            ({"alg": "ed25519"}, "envelope.alg_not_allowed"),
            ({"alg": ["Ed25519"]}, "envelope.alg_not_allowed"),
            ({"alg": None}, "envelope.alg_not_allowed"),
            ({"typ": "JWT"}, "envelope.typ_mismatch"),
            ({"typ": TYP_INNER}, "envelope.typ_mismatch"),
            ({"typ": None}, "envelope.typ_mismatch"),
            ({"kid": None}, "envelope.bad_kid"),
            ({"kid": "VN-GDC-2026"}, "envelope.bad_kid"),
            ({"kid": 7}, "envelope.bad_kid"),
            ({"jwk": {"kty": "OKP"}}, "envelope.header_forbidden"),
            ({"jku": "https://attacker.example/jwks"}, "envelope.header_forbidden"),
            ({"x5u": "https://attacker.example/cert"}, "envelope.header_forbidden"),
            ({"x5c": ["MII"]}, "envelope.header_forbidden"),
            ({"crit": ["exp"]}, "envelope.header_forbidden"),
            ({"b64": False}, "envelope.header_forbidden"),
            ({"zip": "DEF"}, "envelope.zip_forbidden"),
            ({"cty": "json"}, "envelope.header_unknown"),
            ({"nonce": "x"}, "envelope.header_unknown"),
        ],
    )
    def test_refuses_header(self, over: dict[str, Any], code: str) -> None:
        h = header(VN.sig, **over)
        for name in [k for k, v in over.items() if v is None]:
            del h[name]
        with raises(code):
            parse_outer_header(compact(h, self.PAYLOAD, VN.sig))

    @pytest.mark.parametrize(
        ("raw", "code"),
        [
            (
                b'{"alg":"Ed25519","alg":"none","kid":"%s","typ":"alert-envelope+jws"}',
                "duplicate_key",
            ),
            (b'["alg","Ed25519"]', "malformed"),
            (b"not json", "malformed"),
            (
                b'{"alg":"Ed25519","kid":"%s","typ":"alert-envelope+jws","x":"'
                + b"a" * 1000
                + b'"}',
                "too_large",
            ),
        ],
    )
    def test_refuses_header_bytes(self, raw: bytes, code: str) -> None:
        token = compact(raw.replace(b"%s", VN.sig.kid.encode()), self.PAYLOAD, VN.sig)
        with raises(f"envelope.{code}"):
            parse_outer_header(token)

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: t.rsplit(".", 1)[0],
            lambda t: t + ".",
            lambda t: t.replace(".", "..", 1),
            lambda t: "",
            lambda t: t.replace("e", "+", 1),
            lambda t: "=" + t,
            lambda t: "é" + t[1:],
        ],
        ids=["2 segments", "4 segments", "empty header", "empty", "plus", "padding", "non-ascii"],
    )
    def test_refuses_segments(self, mangle: Callable[[str], str]) -> None:
        with raises("envelope.malformed"):
            parse_outer_header(mangle(build()))

    def test_refuses_non_string(self) -> None:
        with raises("envelope.malformed"):
            parse_outer_header(build().encode())  # type: ignore[arg-type]

    def test_refuses_oversized(self) -> None:
        token = build()
        with raises("envelope.too_large") as info:
            parse_outer_header(token, max_size=len(token) - 1)
        assert PROBLEMS[info.value.code][0] == 413
        assert parse_outer_header(token, max_size=len(token)) == VN.sig.kid


class TestVerifyOuter:
    """PROTOCOL 4.4 steps 4-5."""

    def test_returns_routing_and_jwe(self) -> None:
        token = build(TWO)
        outer = verify_outer(token, VN.sig_jwk())
        assert outer.kid == VN.sig.kid
        assert outer.routing == routing(recipients=TWO)
        assert outer.jwe == outer_payload(token)["jwe"]

    def test_accepts_eddsa_alg(self) -> None:
        payload = json.dumps(outer_payload(build())).encode()
        token = compact(header(VN.sig, alg="EdDSA"), payload, VN.sig)
        assert verify_outer(token, VN.sig.public).routing == routing()

    def test_refuses_tampered_routing(self) -> None:
        h, _, s = build(TWO).split(".")
        payload = outer_payload(build(TWO))
        payload["routing"]["recipients"] = ["HK-CED"]
        tampered = f"{h}.{b64u_encode(json.dumps(payload).encode())}.{s}"
        with raises("envelope.bad_signature") as info:
            verify_outer(tampered, VN.sig_jwk())
        assert PROBLEMS[info.value.code][0] == 422

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda sig: bytes([sig[0] ^ 1]) + sig[1:],
            lambda sig: sig[:-1],
            lambda sig: sig + b"\0",
            lambda sig: b"",
        ],
        ids=["flipped", "truncated", "extended", "empty"],
    )
    def test_refuses_bad_signature(self, mangle: Callable[[bytes], bytes]) -> None:
        h, p, s = build().split(".")
        bad = b64u_encode(mangle(b64u_decode(s)))
        with raises("envelope.bad_signature"):
            verify_outer(f"{h}.{p}.{bad}", VN.sig_jwk())

    def test_refuses_non_canonical_signature_encoding(self) -> None:
        h, p, s = build().split(".")
        # 64 bytes encode to 86 characters; the last carries 4 unused bits.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        twin = s[:-1] + alphabet[alphabet.index(s[-1]) | 1]
        with raises("envelope.malformed"):
            verify_outer(f"{h}.{p}.{twin}", VN.sig_jwk())

    def test_refuses_other_key(self) -> None:
        with raises("envelope.kid_mismatch"):
            verify_outer(build(), party("HK-CED").sig_jwk())

    def test_refuses_enc_key(self) -> None:
        with raises("key.wrong_use"):
            verify_outer(build(), VN.enc[0].public.jwk)

    @pytest.mark.parametrize(
        "payload",
        [
            {"routing": routing()},
            {"routing": routing(), "jwe": {}, "note": "x"},
            {"routing": [], "jwe": {}},
            {"routing": routing(), "jwe": "eyJ"},
            [routing()],
        ],
    )
    def test_refuses_payload_shape(self, payload: Any) -> None:
        token = compact(header(VN.sig), json.dumps(payload).encode(), VN.sig)
        with raises("envelope.bad_payload"):
            verify_outer(token, VN.sig_jwk())

    def test_refuses_duplicate_keys_even_when_signed(self) -> None:
        r = json.dumps(routing())
        other = json.dumps(routing(recipients=["KR-KCS"]))
        raw = f'{{"routing":{r},"jwe":{{}},"routing":{other}}}'.encode()
        with raises("envelope.duplicate_key"):
            verify_outer(compact(header(VN.sig), raw, VN.sig), VN.sig_jwk())


def mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A JWE mutation: set (or with `...` delete) the member at a dotted path."""

    def apply(jwe: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = jwe
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key: Any = int(last) if isinstance(target, list) else last
        if value is ...:
            del target[key]
        else:
            target[key] = value

    return apply


def b64json(text: str) -> str:
    return b64u_encode(text.encode())


LOW_ORDER_X = b64u_encode(bytes([1]) + bytes(31))


class TestJweStructure:
    """PROTOCOL 4.4 step 10: the broker checks the JWE without decrypting."""

    JWE = outer_payload(build(TWO))["jwe"]

    def check(self, jwe: dict[str, Any], recipients: tuple[str, ...] = TWO) -> dict[str, str]:
        return check_jwe_structure(jwe, kids(recipients))

    def test_previous_key_accepted(self) -> None:
        keys = {"HK-CED": party("HK-CED").enc[1].public, **enc_keys(["KR-KCS"])}
        jwe = outer_payload(build_envelope(routing(recipients=TWO), BODY, VN.sig, keys))["jwe"]
        assert self.check(jwe)["HK-CED"] == party("HK-CED").enc[1].kid

    @pytest.mark.parametrize(
        "text",
        [
            '{"enc": "A256GCM", "cty": "alert+jws"}',
            '{"cty":"alert+jws","enc":"A256GCM"}',
            '{\n  "enc" : "A256GCM",\n  "cty" : "alert+jws"\n}',
            '{"enc":"A256GCM","cty":"alert\\u002bjws"}',
        ],
        ids=["spaces", "order", "pretty", "escaped"],
    )
    def test_other_spellings_of_the_protected_header_accepted(self, text: str) -> None:
        """Interop: producers with other JSON writers; the AAD is the received string."""
        jwe = {**self.JWE, "protected": b64json(text)}
        assert set(self.check(jwe)) == set(TWO)

    def test_refuses_extra_entry(self) -> None:
        jwe = outer_payload(build(("HK-CED", "KR-KCS", "NZ-POL")))["jwe"]
        with raises("envelope.jwe_recipients_mismatch"):
            self.check(jwe)

    def test_refuses_missing_entry(self) -> None:
        jwe = outer_payload(build(["HK-CED"]))["jwe"]
        with raises("envelope.jwe_recipients_mismatch"):
            self.check(jwe)

    def test_refuses_unknown_kid(self) -> None:
        jwe = copy.deepcopy(self.JWE)
        jwe["recipients"][1]["header"]["kid"] = party("NZ-POL").enc[0].kid
        with raises("envelope.jwe_recipients_mismatch"):
            self.check(jwe)

    def test_refuses_two_entries_for_one_agency(self) -> None:
        keys = [party("HK-CED").enc[0].public, party("HK-CED").enc[1].public]
        jwe = envelope._encrypt(b"x", keys)
        with raises("envelope.jwe_recipients_mismatch"):
            self.check(jwe, ("HK-CED",))

    def test_refuses_key_no_longer_valid(self) -> None:
        with raises("envelope.jwe_recipients_mismatch"):
            check_jwe_structure(
                self.JWE, {"HK-CED": {party("HK-CED").enc[1].kid}, **kids(["KR-KCS"])}
            )

    @pytest.mark.parametrize(
        ("change", "code"),
        [
            (mutate("tag", ...), "jwe_structure"),
            (mutate("unprotected", {}), "jwe_structure"),
            (mutate("aad", "eyJ9"), "jwe_structure"),
            (mutate("tag", b64u_encode(bytes(15))), "jwe_structure"),
            (mutate("tag", ""), "jwe_structure"),
            (mutate("iv", b64u_encode(bytes(16))), "jwe_structure"),
            (mutate("ciphertext", ""), "jwe_structure"),
            (mutate("ciphertext", "ab+d"), "jwe_structure"),
            (mutate("protected", b64json('{"enc":"A128GCM","cty":"alert+jws"}')), "jwe_structure"),
            (mutate("protected", b64json('{"enc":"A256GCM"}')), "jwe_structure"),
            (
                mutate("protected", b64json('{"enc":"A256GCM","cty":"alert+jws","alg":"dir"}')),
                "jwe_structure",
            ),
            (
                mutate("protected", b64json('{"enc":"A256GCM","cty":"alert+jws","zip":"DEF"}')),
                "zip_forbidden",
            ),
            (
                mutate("protected", b64json('{"enc":"A256GCM","enc":"A256GCM","cty":"alert+jws"}')),
                "duplicate_key",
            ),
            (mutate("protected", "e30="), "jwe_structure"),
            (mutate("recipients", []), "jwe_structure"),
            (mutate("recipients", {}), "jwe_structure"),
            (mutate("recipients.0", "entry"), "jwe_structure"),
            (mutate("recipients.0.encrypted_key", ...), "jwe_structure"),
            (mutate("recipients.0.extra", 1), "jwe_structure"),
            (mutate("recipients.0.header", "e30"), "jwe_structure"),
            (mutate("recipients.0.encrypted_key", b64u_encode(bytes(32))), "jwe_structure"),
            (mutate("recipients.0.header.alg", "ECDH-ES"), "alg_not_allowed"),
            (mutate("recipients.0.header.alg", "RSA1_5"), "alg_not_allowed"),
            (mutate("recipients.0.header.alg", "dir"), "alg_not_allowed"),
            (mutate("recipients.0.header.zip", "DEF"), "zip_forbidden"),
            (mutate("recipients.0.header.apu", "QWxpY2U"), "jwe_structure"),
            (mutate("recipients.0.header.kid", "hk-ced-2026"), "bad_kid"),
            (mutate("recipients.0.header.epk.crv", "P-256"), "jwe_structure"),
            (mutate("recipients.0.header.epk.kty", "EC"), "jwe_structure"),
            (mutate("recipients.0.header.epk.d", LOW_ORDER_X), "jwe_structure"),
            (mutate("recipients.0.header.epk.x", b64u_encode(bytes(31))), "jwe_structure"),
            (mutate("recipients.0.header.epk.x", LOW_ORDER_X), "low_order_epk"),
        ],
    )
    def test_refuses(self, change: Callable[[dict[str, Any]], None], code: str) -> None:
        jwe = copy.deepcopy(self.JWE)
        change(jwe)
        with raises(f"envelope.{code}"):
            self.check(jwe)

    def test_refuses_too_many_recipients(self) -> None:
        jwe = copy.deepcopy(self.JWE)
        jwe["recipients"] = jwe["recipients"] * 33
        with raises("envelope.jwe_structure"):
            self.check(jwe)


class TestOpen:
    """PROTOCOL 4.5 steps 3-7, each refusal with its own code."""

    def test_opens(self) -> None:
        token = build(TWO)
        opened = open_as("KR-KCS", token)
        assert opened.routing == routing(recipients=TWO)
        assert opened.body == BODY
        assert opened.sender_kid == VN.sig.kid
        assert opened.outer_jws == token
        verify_compact(opened.inner_jws, VN.sig.public, TYP_INNER)  # the evidence stands alone

    def test_previous_key_still_decrypts(self) -> None:
        keys = {"HK-CED": party("HK-CED").enc[1].public}
        token = build_envelope(routing(), BODY, VN.sig, keys)
        assert open_as("HK-CED", token).enc_kid == party("HK-CED").enc[1].kid

    def test_whitespace_protected_header_accepted(self) -> None:
        """Regression (research/ecosystem.md gotcha 1): joserfc fails on this; we must not."""
        r = routing()
        spaced = '{"enc": "A256GCM", "cty": "alert+jws"}'
        token = seal(r, encrypt(inner_of(build()), ["HK-CED"], protected=spaced), VN.sig)
        assert open_as("HK-CED", token).body == BODY

    def test_accepts_eddsa_on_both_layers(self) -> None:
        r = routing()
        inner_payload = json.loads(b64u_decode(inner_of(build()).split(".")[1]))
        inner = compact(
            header(VN.sig, TYP_INNER, alg="EdDSA"), json.dumps(inner_payload).encode(), VN.sig
        )
        payload = {"routing": r, "jwe": encrypt(inner, ["HK-CED"])}
        token = compact(header(VN.sig, alg="EdDSA"), json.dumps(payload).encode(), VN.sig)
        assert open_as("HK-CED", token).body == BODY

    # --- 3. outer

    def test_refuses_tampered_routing(self) -> None:
        h, _, s = build(TWO).split(".")
        payload = outer_payload(build(TWO))
        payload["routing"]["offence"] = "tobacco"
        with raises("envelope.bad_signature"):
            open_as("HK-CED", f"{h}.{b64u_encode(json.dumps(payload).encode())}.{s}")

    def test_refuses_sender_not_owning_the_key(self) -> None:
        token = build()
        with raises("envelope.sender_mismatch"):
            open_envelope(
                token,
                my_agency="HK-CED",
                my_enc_keys=party("HK-CED").enc,
                sender_sig_jwk=VN.sig_jwk(agency="VN-MPS"),
            )

    def test_refuses_oversized(self) -> None:
        token = build()
        with raises("envelope.too_large"):
            open_as("HK-CED", token, max_size=len(token) - 1)

    # --- 4. addressing

    def test_refuses_when_not_a_recipient(self) -> None:
        with raises("envelope.not_addressed_to_us"):
            open_as("NZ-POL", build(TWO))

    def test_refuses_when_no_entry_has_our_kid(self) -> None:
        rotated = party("HK-CED", generation=1)
        with raises("envelope.not_addressed_to_us"):
            open_envelope(
                build(),
                my_agency="HK-CED",
                my_enc_keys=rotated.enc,
                sender_sig_jwk=VN.sig_jwk(),
            )

    def test_refuses_two_entries_with_our_kids(self) -> None:
        keys = [party("HK-CED").enc[0].public, party("HK-CED").enc[1].public]
        jwe = envelope._encrypt(inner_of(build()).encode(), keys)
        with raises("envelope.not_addressed_to_us"):
            open_as("HK-CED", seal(routing(), jwe, VN.sig))

    # --- 5. decrypt

    def test_refuses_corrupted_ciphertext(self) -> None:
        jwe = outer_payload(build())["jwe"]
        ciphertext = bytearray(b64u_decode(jwe["ciphertext"]))
        ciphertext[0] ^= 1
        jwe["ciphertext"] = b64u_encode(bytes(ciphertext))
        with raises("envelope.decrypt_failed"):
            open_as("HK-CED", seal(routing(), jwe, VN.sig))

    def test_refuses_wrong_wrapped_key(self) -> None:
        jwe = outer_payload(build(TWO))["jwe"]
        hk, kr = jwe["recipients"]
        hk["encrypted_key"] = kr["encrypted_key"]
        with raises("envelope.decrypt_failed"):
            open_as("HK-CED", seal(routing(recipients=TWO), jwe, VN.sig))

    def test_refuses_low_order_epk(self) -> None:
        jwe = outer_payload(build())["jwe"]
        jwe["recipients"][0]["header"]["epk"]["x"] = LOW_ORDER_X
        with raises("envelope.low_order_epk"):
            open_as("HK-CED", seal(routing(), jwe, VN.sig))

    def test_low_order_epk_fails_in_ecdh_too(self) -> None:
        """Defense in depth: past our table, `cryptography` refuses the all-zero secret."""
        jwe = outer_payload(build())["jwe"]
        entry = jwe["recipients"][0]
        entry["header"]["epk"]["x"] = LOW_ORDER_X
        with raises("envelope.decrypt_failed") as info:
            envelope._decrypt(jwe, entry, party("HK-CED").enc[0])
        assert "Error computing shared key" in str(info.value.__cause__)

    def test_refuses_zip(self) -> None:
        r = routing()
        protected = '{"enc":"A256GCM","cty":"alert+jws","zip":"DEF"}'
        token = seal(r, encrypt(inner_of(build()), ["HK-CED"], protected=protected), VN.sig)
        with raises("envelope.zip_forbidden"):
            open_as("HK-CED", token)

    # --- 6. inner

    def test_refuses_inner_and_outer_kid_differ(self) -> None:
        """A sender rotating keys mid-build signs the layers with different keys."""
        rotated = party(SENDER, generation=1).sig
        r = routing()
        token = seal(r, encrypt(inner_of(build()), ["HK-CED"]), rotated)
        with raises("envelope.kid_mismatch"):
            open_envelope(
                token,
                my_agency="HK-CED",
                my_enc_keys=party("HK-CED").enc,
                sender_sig_jwk=rotated.public,
            )

    def test_refuses_jwe_moved_by_an_outsider(self) -> None:
        """Someone without a key swaps another envelope's JWE in: the outer signature breaks."""
        h, p, s = build(TWO, mid="0190f3c2-0000-7000-8000-000000000002").split(".")
        payload = json.loads(b64u_decode(p))
        payload["jwe"] = outer_payload(build(TWO))["jwe"]
        with raises("envelope.bad_signature"):
            open_as("HK-CED", f"{h}.{b64u_encode(json.dumps(payload).encode())}.{s}")

    def test_refuses_jwe_reused_under_new_routing(self) -> None:
        """The sender itself re-sends an old JWE under a fresh mid: the inner mid disagrees."""
        old_jwe = outer_payload(build(TWO))["jwe"]
        token = seal(
            routing(recipients=TWO, mid="0190f3c2-0000-7000-8000-000000000002"), old_jwe, VN.sig
        )
        with raises("envelope.routing_mismatch"):
            open_as("HK-CED", token)

    def test_refuses_jwe_moved_into_another_senders_envelope(self) -> None:
        """KR-KCS puts VN-GDC's JWE under its own signature and routing."""
        kr = party("KR-KCS")
        r = routing(sender="KR-KCS", recipients=["HK-CED"])
        token = seal(r, outer_payload(build())["jwe"], kr.sig)
        with raises("envelope.kid_mismatch"):
            open_as("HK-CED", token, sender="KR-KCS")

    def test_refuses_surreptitious_forwarding_rewrapped(self) -> None:
        """HK-CED decrypts VN-GDC's alert and forwards the inner JWS to NZ-POL as its own."""
        hk = party("HK-CED")
        inner = inner_of(build())
        r = routing(sender="HK-CED", recipients=["NZ-POL"])
        token = seal(r, encrypt(inner, ["NZ-POL"]), hk.sig)
        with raises("envelope.kid_mismatch"):
            open_as("NZ-POL", token, sender="HK-CED")

    def test_refuses_surreptitious_forwarding_reencrypted(self) -> None:
        """HK-CED re-encrypts to NZ-POL inside VN-GDC's own outer: that signature breaks."""
        h, _, s = build().split(".")
        payload = {
            "routing": routing(recipients=["NZ-POL"]),
            "jwe": encrypt(inner_of(build()), ["NZ-POL"]),
        }
        with raises("envelope.bad_signature"):
            open_as("NZ-POL", f"{h}.{b64u_encode(json.dumps(payload).encode())}.{s}")

    def test_refuses_when_missing_from_inner_recipients(self) -> None:
        """Routing names NZ-POL, but the sender's signed statement was for HK-CED only."""
        r = routing(recipients=["HK-CED", "NZ-POL"])
        token = seal(r, encrypt(inner_of(build()), ["HK-CED", "NZ-POL"]), VN.sig)
        with raises("envelope.routing_mismatch"):
            open_as("NZ-POL", token)

    def test_refuses_inner_routing_differs(self) -> None:
        token = seal(routing(priority="routine"), encrypt(inner_of(build()), ["HK-CED"]), VN.sig)
        with raises("envelope.routing_mismatch"):
            open_as("HK-CED", token)

    def test_refuses_inner_routing_differs_only_in_json_type(self) -> None:
        token = seal(routing(v=True), encrypt(inner_of(build()), ["HK-CED"]), VN.sig)
        with raises("envelope.routing_mismatch"):
            open_as("HK-CED", token)

    def test_refuses_outer_token_as_inner(self) -> None:
        token = seal(routing(), encrypt(build(), ["HK-CED"]), VN.sig)
        with raises("envelope.typ_mismatch"):
            open_as("HK-CED", token)

    @pytest.mark.parametrize(
        "change",
        [{"extra": 1}, {"body": "text"}, {"body": None}],
        ids=["extra member", "body not object", "body null"],
    )
    def test_refuses_inner_payload_shape(self, change: dict[str, Any]) -> None:
        r = routing()
        payload = {n: r[n] for n in ("mid", "iat", "sender", "recipients")}
        inner = sign_compact({**payload, "routing": r, "body": BODY, **change}, VN.sig, TYP_INNER)
        token = seal(r, encrypt(inner, ["HK-CED"]), VN.sig)
        with raises("envelope.bad_payload"):
            open_as("HK-CED", token)

    def test_refuses_non_ascii_plaintext(self) -> None:
        jwe = envelope._encrypt("é.é.é".encode(), [party("HK-CED").enc[0].public])
        with raises("envelope.malformed"):
            open_as("HK-CED", seal(routing(), jwe, VN.sig))

    # --- 3 and 7 against the log time

    def test_key_validity_at_log_time(self) -> None:
        token = build()
        iat = routing()["iat"]

        def at(t: int, **meta: Any) -> envelope.OpenedAlert:
            return open_envelope(
                token,
                my_agency="HK-CED",
                my_enc_keys=party("HK-CED").enc,
                sender_sig_jwk=VN.sig_jwk(**meta),
                at=t,
            )

        assert at(iat, nbf=iat - 10, exp=iat + 10).body == BODY
        with raises("key.not_valid_at"):
            at(iat + 10, nbf=iat - 10, exp=iat + 10)
        with raises("key.compromised"):
            at(iat, compromised_since=iat - 1)
        assert at(iat - MAX_SKEW).body == BODY
        with raises("envelope.iat_too_late"):
            at(iat - MAX_SKEW - 1)


MAX_SKEW = envelope.MAX_IAT_SKEW_SECONDS


class TestCompact:
    """Receipts, acks and directory snapshots share the header allowlist."""

    def test_round_trip(self) -> None:
        payload = {"v": 1, "mid": "m", "status": "decrypted"}
        token = sign_compact(payload, VN.sig, TYP_ACK)
        assert verify_compact(token, VN.sig_jwk(), TYP_ACK) == payload

    def test_typ_is_bound(self) -> None:
        token = sign_compact({"v": 1}, VN.sig, TYP_ACK)
        with raises("envelope.typ_mismatch"):
            verify_compact(token, VN.sig_jwk(), TYP_RECEIPT)

    def test_refuses_non_object_payload(self) -> None:
        token = compact(header(VN.sig, TYP_ACK), b"[1]", VN.sig)
        with raises("envelope.bad_payload"):
            verify_compact(token, VN.sig_jwk(), TYP_ACK)

    def test_refuses_alg_none_without_signature(self) -> None:
        h = b64u_encode(json.dumps(header(VN.sig, TYP_ACK, alg="none")).encode())
        token = f"{h}.{b64u_encode(b'{}')}."
        with raises("envelope.alg_not_allowed"):
            verify_compact(token, VN.sig_jwk(), TYP_ACK)

    def test_refuses_hs256_with_public_key_as_secret(self) -> None:
        """The classic confusion: HMAC keyed with the published public key."""
        import hashlib
        import hmac

        h = b64u_encode(json.dumps(header(VN.sig, TYP_ACK, alg="HS256")).encode())
        signing_input = f"{h}.{b64u_encode(b'{}')}"
        mac = hmac.new(VN.sig.public.x.encode(), signing_input.encode(), hashlib.sha256).digest()
        with raises("envelope.alg_not_allowed"):
            verify_compact(f"{signing_input}.{b64u_encode(mac)}", VN.sig_jwk(), TYP_ACK)


agency_ids = st.sampled_from(["HK-CED", "KR-KCS", "NZ-POL", "CN-GACC", "MZ-PGR", "VN-SPP"])
json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipients=st.lists(agency_ids, min_size=1, max_size=4, unique=True),
    who=st.integers(min_value=0),
    mid=st.uuids(version=4).map(str),
    iat=st.integers(0, 2**40),
    body=st.dictionaries(json_text, json_values, max_size=5),
    extra=st.dictionaries(st.sampled_from(["operation", "priority", "offence"]), json_values),
)
def test_round_trip_property(
    recipients: list[str], who: int, mid: str, iat: int, body: dict[str, Any], extra: dict[str, Any]
) -> None:
    token = build(recipients, body=body, mid=mid, iat=iat, **extra)
    me = sorted(recipients)[who % len(recipients)]
    opened = open_as(me, token)
    assert opened.body == body
    assert opened.routing == routing(recipients=recipients, mid=mid, iat=iat, **extra)
    assert check_jwe_structure(verify_outer(token, VN.sig_jwk()).jwe, kids(recipients))
    assert JWE_PROTECTED in b64u_decode(outer_payload(token)["jwe"]["protected"]).decode()
    assert TYP_OUTER in b64u_decode(token.split(".")[0]).decode()
