"""Keys: generation, public JWK validation, thumbprints, validity times and key files."""

import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from jwcrypto.jwk import JWK

from broker.crypto import keys
from broker.crypto.errors import InvalidKey
from broker.crypto.keys import (
    EncryptionKey,
    SigningKey,
    b64u_check,
    b64u_decode,
    b64u_encode,
    check_passphrase,
    check_valid_at,
    generate_passphrase,
    is_small_order,
    load_encryption_key,
    load_signing_key,
    parse_public_jwk,
    save_private_key,
    thumbprint,
)
from tests.crypto.envelope_world import party, raises

SIG = party("VN-GDC").sig
ENC = party("VN-GDC").enc[0]
ZERO_X = b64u_encode(bytes(32))


class TestPublicJwk:
    @pytest.mark.parametrize(
        ("key", "crv", "alg"),
        [(SIG, "Ed25519", "Ed25519"), (ENC, "X25519", "ECDH-ES+A256KW")],
    )
    def test_export(self, key: SigningKey | EncryptionKey, crv: str, alg: str) -> None:
        jwk = key.public.jwk
        assert list(jwk) == ["kty", "crv", "x", "use", "alg", "kid"]
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", crv, alg)
        assert jwk["kid"] == key.kid == thumbprint(jwk) == JWK(**jwk).thumbprint()
        assert parse_public_jwk(jwk) == key.public

    def test_generated_keys_differ(self) -> None:
        assert SigningKey.generate().kid != SigningKey.generate().kid
        assert EncryptionKey.generate().kid != EncryptionKey.generate().kid

    def test_metadata_is_kept_apart(self) -> None:
        jwk = {**SIG.public.jwk, "agency": "VN-GDC", "status": "active", "nbf": 1, "x5t": "ignored"}
        parsed = parse_public_jwk(jwk)
        assert parsed.jwk == SIG.public.jwk
        assert parsed.meta == {"agency": "VN-GDC", "status": "active", "nbf": 1, "x5t": "ignored"}

    def test_alg_and_kid_are_optional(self) -> None:
        jwk = {k: v for k, v in SIG.public.jwk.items() if k not in ("alg", "kid")}
        assert parse_public_jwk(jwk).kid == SIG.kid
        assert parse_public_jwk({**jwk, "alg": "EdDSA"}).kid == SIG.kid

    @pytest.mark.parametrize(
        ("change", "code"),
        [
            ({"d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}, "key.private_material"),
            ({"k": "c2VjcmV0"}, "key.private_material"),
            ({"kty": "EC"}, "key.wrong_curve"),
            ({"crv": "X25519"}, "key.wrong_curve"),
            ({"crv": "Ed448"}, "key.wrong_curve"),
            ({"use": "enc"}, "key.wrong_curve"),
            ({"use": "sign"}, "key.wrong_use"),
            ({"use": None}, "key.wrong_use"),
            ({"alg": "ES256"}, "key.wrong_use"),
            ({"alg": "ECDH-ES+A256KW"}, "key.wrong_use"),
            ({"x": b64u_encode(bytes(31))}, "key.invalid"),
            ({"x": b64u_encode(bytes(33))}, "key.invalid"),
            ({"x": None}, "key.invalid"),
            ({"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="}, "key.invalid"),
            ({"x": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"}, "key.invalid"),
            ({"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp"}, "key.invalid"),  # bits
            ({"x": ZERO_X}, "key.low_order"),
            ({"kid": "some-name"}, "key.kid_mismatch"),
        ],
    )
    def test_refuses_sig_key(self, change: dict[str, Any], code: str) -> None:
        jwk = {**SIG.public.jwk, **change}
        if jwk["use"] is None:
            del jwk["use"]
        if "x" in change and "kid" not in change:
            del jwk["kid"]
        with raises(code):
            parse_public_jwk(jwk)

    def test_refuses_wrong_use_for_the_purpose(self) -> None:
        with raises("key.wrong_use"):
            parse_public_jwk(ENC.public.jwk, use="sig")
        with raises("key.wrong_use"):
            parse_public_jwk(SIG.public.jwk, use="enc")

    def test_refuses_low_order_x25519(self) -> None:
        with raises("key.low_order"):
            parse_public_jwk({"kty": "OKP", "crv": "X25519", "use": "enc", "x": ZERO_X})

    def test_refuses_non_object(self) -> None:
        with raises("key.invalid"):
            parse_public_jwk(["kty", "OKP"])  # type: ignore[arg-type]

    def test_small_order_ed25519_key_forges_any_message(self) -> None:
        """Why sig keys are checked: OpenSSL accepts (R=identity, S=0) under the identity key."""
        identity = bytes([1]) + bytes(31)
        assert is_small_order(identity, "Ed25519")
        Ed25519PublicKey.from_public_bytes(identity).verify(identity + bytes(32), b"anything")
        with raises("key.low_order"):
            parse_public_jwk(
                {"kty": "OKP", "crv": "Ed25519", "use": "sig", "x": b64u_encode(identity)}
            )
        # The sign bit is ignored: -identity encodes the same y.
        assert is_small_order(bytes([1]) + bytes(30) + b"\x80", "Ed25519")

    def test_sign_and_verify(self) -> None:
        signature = SIG.sign(b"data")
        SIG.public.verify(signature, b"data")
        with raises("envelope.bad_signature"):
            SIG.public.verify(signature, b"date")
        with raises("key.wrong_use"):
            ENC.public.verify(signature, b"data")


class TestSmallOrderTables:
    """The constants in keys.py, re-derived rather than trusted."""

    def test_x25519_entries_give_an_all_zero_secret(self) -> None:
        for raw in keys._X25519_SMALL_ORDER:
            with pytest.raises(ValueError, match="shared key"):
                X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))

    def test_ed25519_entries_are_8_torsion_points(self) -> None:
        p = 2**255 - 19
        d = -121665 * pow(121666, -1, p) % p

        def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
            (x1, y1), (x2, y2) = a, b  # twisted Edwards, a = -1 (RFC 8032 section 5.1.4)
            t = d * x1 * x2 * y1 * y2 % p
            x = (x1 * y2 + x2 * y1) * pow(1 + t, -1, p) % p
            return x, (y1 * y2 + x1 * x2) * pow(1 - t, -1, p) % p

        ys = set()
        for raw in keys._ED25519_SMALL_ORDER:
            y = int.from_bytes(raw, "little") % p
            u = (y * y - 1) * pow(d * y * y + 1, -1, p) % p
            x = pow(u, (p + 3) // 8, p)  # RFC 8032 section 5.1.3 square root
            x = x if x * x % p == u else x * pow(2, (p - 1) // 4, p) % p
            point = (x, y)
            for _ in range(3):
                point = add(point, point)
            assert point == (0, 1)
            ys.add(y)
        assert len(ys) == 5  # the 8 torsion points have 5 distinct y (sign bit ignored)


class TestBase64url:
    def test_round_trip(self) -> None:
        for n in range(70):
            data = bytes(range(n))
            assert b64u_decode(b64u_encode(data)) == data

    @pytest.mark.parametrize(
        "text", ["A", "QR", "QUJ", "QQ==", "QU+D", "QU/D", "QU D", "QUJD\n", "é", "QUJDQ"]
    )
    def test_refuses(self, text: str) -> None:
        with raises("envelope.malformed"):
            b64u_decode(text)
        with raises("envelope.malformed"):
            b64u_check(text)

    def test_error_class_is_the_callers(self) -> None:
        with raises("key.invalid"):
            b64u_decode("QR", InvalidKey)


class TestThumbprint:
    def test_rfc7638_example(self) -> None:
        """RFC 7638 section 3.1 (RSA), to show the function is not OKP-only by accident."""
        n = (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
            "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
            "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
            "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        )
        jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
        assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

    def test_refuses_unknown_kty(self) -> None:
        with raises("key.invalid"):
            thumbprint({"kty": "XYZ"})
        with raises("key.invalid"):
            thumbprint({"kty": "OKP", "crv": "Ed25519"})


class TestValidAt:
    KEY = parse_public_jwk({**SIG.public.jwk, "nbf": 1000, "exp": 2000})

    @pytest.mark.parametrize("at", [1000, 1999, datetime.fromtimestamp(1500, UTC)])
    def test_inside(self, at: int | datetime) -> None:
        check_valid_at(self.KEY, at)

    @pytest.mark.parametrize("at", [999, 2000])
    def test_outside(self, at: int) -> None:
        with raises("key.not_valid_at"):
            check_valid_at(self.KEY, at)

    def test_revoked_and_compromised(self) -> None:
        revoked = parse_public_jwk({**SIG.public.jwk, "revoked_at": 1500})
        check_valid_at(revoked, 1499)
        with raises("key.not_valid_at"):
            check_valid_at(revoked, 1500)
        compromised = parse_public_jwk({**SIG.public.jwk, "compromised_since": 1200})
        check_valid_at(compromised, 1199)
        with raises("key.compromised"):
            check_valid_at(compromised, 1200)

    @pytest.mark.parametrize("value", ["2026-01-01T00:00:00Z", 1.5e9, True])
    def test_refuses_times_that_are_not_numeric_dates(self, value: object) -> None:
        with raises("key.invalid"):
            check_valid_at(parse_public_jwk({**SIG.public.jwk, "exp": value}), 1000)


class TestPassphrase:
    def test_generated(self) -> None:
        passphrase = generate_passphrase()
        assert len(passphrase) == 26
        assert set(passphrase) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        check_passphrase(passphrase)
        assert generate_passphrase() != passphrase

    @pytest.mark.parametrize(
        "ok", ["ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "aB3_-xYz09QwErTy7uIoP1"]
    )
    def test_accepts(self, ok: str) -> None:
        check_passphrase(ok)

    @pytest.mark.parametrize(
        "weak",
        [
            "ABCDEFGHIJKLMNOPQRSTUVWXY",  # 25 base32 characters
            "aB3_-xYz09QwErTy7uIoP",  # 21 base64url characters
            "correct horse battery staple",  # outside both alphabets
            "A" * 40,
            "passwordpasswordpassword",
        ],
    )
    def test_refuses(self, weak: str) -> None:
        with raises("key.weak_passphrase"):
            check_passphrase(weak)


class TestKeyFiles:
    PASSPHRASE = "QK7XW2MZ4TR5YV6NB3HJ2DLF7P"

    def test_round_trip_and_modes(self, tmp_path: Path) -> None:
        directory = tmp_path / "keys"
        sig_path = save_private_key(SIG, directory, "VN-GDC/fp-hcm-01", self.PASSPHRASE)
        enc_path = save_private_key(ENC, directory, "VN-GDC", self.PASSPHRASE)
        assert sig_path.name == f"VN-GDC__fp-hcm-01-sig-{SIG.kid}.p8.pem"
        assert enc_path.name == f"VN-GDC-enc-{ENC.kid}.p8.pem"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(sig_path.stat().st_mode) == 0o600
        assert sig_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert load_signing_key(sig_path, self.PASSPHRASE).kid == SIG.kid
        assert load_encryption_key(enc_path, self.PASSPHRASE).kid == ENC.kid

    def test_never_overwrites(self, tmp_path: Path) -> None:
        save_private_key(SIG, tmp_path / "k", "VN-GDC", self.PASSPHRASE)
        with pytest.raises(FileExistsError):
            save_private_key(SIG, tmp_path / "k", "VN-GDC", self.PASSPHRASE)

    def test_refuses_weak_passphrase(self, tmp_path: Path) -> None:
        with raises("key.weak_passphrase"):
            save_private_key(SIG, tmp_path, "VN-GDC", "hunter2")

    @pytest.mark.parametrize("owner", ["../etc", "VN-GDC/../x", "VN_GDC", "a/b/c", "", "VN GDC"])
    def test_refuses_unsafe_owner(self, tmp_path: Path, owner: str) -> None:
        with raises("key.invalid"):
            save_private_key(SIG, tmp_path, owner, self.PASSPHRASE)

    def test_refuses_shared_directory_and_file(self, tmp_path: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        shared.chmod(0o755)
        with raises("key.insecure_storage"):
            save_private_key(SIG, shared, "VN-GDC", self.PASSPHRASE)
        path = save_private_key(SIG, tmp_path / "k", "VN-GDC", self.PASSPHRASE)
        path.chmod(0o640)
        with raises("key.insecure_storage"):
            load_signing_key(path, self.PASSPHRASE)

    def test_wrong_passphrase_or_kind(self, tmp_path: Path) -> None:
        path = save_private_key(SIG, tmp_path / "k", "VN-GDC", self.PASSPHRASE)
        with raises("key.unreadable"):
            load_signing_key(path, "WRONGWRONGWRONGWRONGWRONG2")
        with raises("key.unreadable"):
            load_encryption_key(path, self.PASSPHRASE)

    def test_refuses_unencrypted_file(self, tmp_path: Path) -> None:
        path = tmp_path / "plain.pem"
        path.write_bytes(
            SIG.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        with raises("key.unreadable"):
            load_signing_key(path, self.PASSPHRASE)

    def test_refuses_renamed_file(self, tmp_path: Path) -> None:
        path = save_private_key(SIG, tmp_path / "k", "VN-GDC", self.PASSPHRASE)
        other = party("HK-CED").sig.kid
        renamed = path.rename(path.with_name(f"VN-GDC-sig-{other}.p8.pem"))
        with raises("key.kid_mismatch"):
            load_signing_key(renamed, self.PASSPHRASE)
