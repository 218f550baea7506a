"""C2SP signed notes and checkpoints against the Go sumdb/note vectors and PROTOCOL.md §5.3."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from broker.crypto import note as note_mod
from broker.crypto.merkle import EMPTY_ROOT
from broker.crypto.note import (
    Checkpoint,
    NoteError,
    format_signer_key,
    format_verifier_key,
    key_id,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
    verify_checkpoint,
    verify_note,
)

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir() and os.environ.get("CI") != "true",
    reason=f"test vectors not found at {VECTORS}",
)

# PROTOCOL.md §5.3: a real, self-consistent example checkpoint.
ORIGIN = "broker.example.int/exchange-log/v1"
EXAMPLE_SEED = hashlib.sha256(b"example broker log key - DO NOT USE").digest()
EXAMPLE_VKEY = f"{ORIGIN}+ae2ac04d+AWPdzy2PtxwkaxrLIXuN67R64hEK2DCTL9gEnTuW1jc/"
EXAMPLE_NOTE = (
    f"{ORIGIN}\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n— {ORIGIN} "
    "rirATVGfL1y1+gCoC81S1rnFiK8Xf/o7uN8Z5wqWyGtHeEzg77wQuGp4cw5Uft1CDgVgIART0+ZQuaG/fq6ekeeu1Qk=\n"
)
EXAMPLE_KEY = Ed25519PrivateKey.from_private_bytes(EXAMPLE_SEED)
EXAMPLE_VERIFIER = parse_verifier_key(EXAMPLE_VKEY)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))


def go_vectors() -> Any:
    return json.loads((VECTORS / "signed-note" / "vectors.json").read_text())


def code_of(call: Any) -> str:
    with pytest.raises(NoteError) as e:
        call()
    return e.value.code


@needs_vectors
def test_go_note_vectors_byte_exact() -> None:
    v = go_vectors()
    signer = parse_signer_key(v["signer_key"])
    verifier = parse_verifier_key(v["verifier_key"])
    assert (signer.name, signer.key_id.hex()) == (verifier.name, verifier.key_id.hex())
    assert (
        verifier.key_id == key_id(verifier.name, verifier.public_key) == bytes.fromhex("c74f20a3")
    )
    assert format_signer_key(signer.name, signer.private_key) == v["signer_key"]
    assert format_verifier_key(verifier.name, signer.private_key.public_key()) == v["verifier_key"]
    assert sign_note(v["text"], signer.name, signer.private_key) == v["signed_note"]
    assert verify_note(v["signed_note"], verifier) == v["text"]
    assert verify_note(v["signed_note"].encode(), verifier) == v["text"]


@needs_vectors
def test_go_vectors_unknown_signers_ignored() -> None:
    v = go_vectors()
    peter, enoch = (
        parse_verifier_key(v["verifier_key"]),
        parse_verifier_key(v["second_verifier_key"]),
    )
    both = v["signed_note"] + v["second_signature_line"]
    assert verify_note(both, peter) == verify_note(both, enoch) == v["text"]
    enoch_only = v["text"] + "\n" + v["second_signature_line"]
    assert code_of(lambda: verify_note(enoch_only, peter)) == "unverified"
    # Same name as the pinned key but another key id: ignored, not an error.
    impostor = sign_note(v["text"], peter.name, OTHER_KEY)
    assert code_of(lambda: verify_note(impostor, peter)) == "unverified"
    assert verify_note(impostor + v["signed_note"].split("\n\n")[1], peter) == v["text"]


def test_protocol_example_checkpoint() -> None:
    # The 8-leaf root of transparency-dev's constants (test_merkle checks it against the vectors).
    root8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
    assert format_verifier_key(ORIGIN, EXAMPLE_KEY.public_key()) == EXAMPLE_VKEY
    assert EXAMPLE_VERIFIER.key_id.hex() == "ae2ac04d"
    assert sign_note(Checkpoint(ORIGIN, 8, root8).format(), ORIGIN, EXAMPLE_KEY) == EXAMPLE_NOTE
    assert verify_checkpoint(EXAMPLE_NOTE, EXAMPLE_VERIFIER) == Checkpoint(ORIGIN, 8, root8)


def test_bad_and_tampered_signatures() -> None:
    text, sig_line = EXAMPLE_NOTE.split("\n\n")
    name, b64 = sig_line[2:-1].split(" ")
    raw = base64.b64decode(b64)
    flipped = raw[:10] + bytes([raw[10] ^ 1]) + raw[11:]
    for bad_raw in (flipped, raw[:-1], raw + b"\0"):
        bad = f"{text}\n\n— {name} {base64.b64encode(bad_raw).decode()}\n"
        assert code_of(lambda bad=bad: verify_note(bad, EXAMPLE_VERIFIER)) == "bad_signature"
    tampered = EXAMPLE_NOTE.replace("\n8\n", "\n9\n")
    assert code_of(lambda: verify_note(tampered, EXAMPLE_VERIFIER)) == "bad_signature"
    # A bad line by the pinned key rejects the note even beside a good one.
    bad = f"{EXAMPLE_NOTE}— {name} {base64.b64encode(flipped).decode()}\n"
    assert code_of(lambda: verify_note(bad, EXAMPLE_VERIFIER)) == "bad_signature"


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(EXAMPLE_NOTE.replace("\n\n", "\n"), id="no-blank-line"),
        pytest.param(EXAMPLE_NOTE.split("\n\n")[0] + "\n\n", id="no-signature"),
        pytest.param(EXAMPLE_NOTE[:-1], id="no-final-newline"),
        pytest.param(EXAMPLE_NOTE + "extra\n", id="line-after-signatures"),
        pytest.param(EXAMPLE_NOTE + "\n", id="blank-line-after-signatures"),
        pytest.param(EXAMPLE_NOTE.replace("— ", "- "), id="hyphen-not-em-dash"),
        pytest.param(EXAMPLE_NOTE.replace(f"— {ORIGIN}", "— a+b"), id="plus-in-name"),
        pytest.param(EXAMPLE_NOTE.replace(f"— {ORIGIN}", "— a\u00a0b"), id="space-in-name"),
        pytest.param(EXAMPLE_NOTE.replace(f"— {ORIGIN} ", f"— {ORIGIN}  "), id="two-spaces"),
        pytest.param(EXAMPLE_NOTE.replace("Qk=\n", "Qk\n"), id="unpadded-base64"),
        pytest.param(EXAMPLE_NOTE.replace("Qk=\n", "Ql=\n"), id="non-canonical-base64"),
        pytest.param(EXAMPLE_NOTE.replace("Qk=\n", "Qk=\r\n"), id="carriage-return"),
        pytest.param(f"{ORIGIN}\n\n— {ORIGIN} rirATQ==\n", id="signature-too-short"),
        pytest.param(EXAMPLE_NOTE.replace("8\n", "8\t\n", 1), id="control-char-in-text"),
        pytest.param(EXAMPLE_NOTE.replace("8\n", "\udc80\n", 1), id="lone-surrogate"),
        pytest.param(EXAMPLE_NOTE.encode().replace(b"8\n", b"\xff\n", 1), id="invalid-utf8"),
        pytest.param(EXAMPLE_NOTE + f"— x {'AAAAAAA='}\n" * 100, id="too-many-signatures"),
    ],
)
def test_malformed_notes_rejected(note: str | bytes) -> None:
    assert code_of(lambda: verify_note(note, EXAMPLE_VERIFIER)) == "malformed"


def test_text_with_blank_lines_and_unicode() -> None:
    text = "Ognuno sta solo\n\ned è subito sera.\n"
    note = sign_note(text, ORIGIN, EXAMPLE_KEY)
    assert verify_note(note, EXAMPLE_VERIFIER) == text


@pytest.mark.parametrize(
    ("key", "parser"),
    [
        (EXAMPLE_VKEY.replace("+ae2ac04d+", "+ae2ac04e+"), parse_verifier_key),
        (EXAMPLE_VKEY.replace("+ae2ac04d+", "+ae2ac04+"), parse_verifier_key),
        (EXAMPLE_VKEY.replace("+ae2ac04d+", "+ ae2ac04d+"), parse_verifier_key),
        (EXAMPLE_VKEY.replace("+AWPd", "+AmPd"), parse_verifier_key),  # algorithm 0x02
        (EXAMPLE_VKEY.replace("jc/", "jc"), parse_verifier_key),
        (EXAMPLE_VKEY.split("+", 1)[1], parse_verifier_key),
        ("a b" + EXAMPLE_VKEY[len(ORIGIN) :], parse_verifier_key),
        (EXAMPLE_VKEY, parse_signer_key),
        ("PRIVATE+KEY+" + EXAMPLE_VKEY, parse_signer_key),  # public key where the seed goes
    ],
)
def test_bad_keys_rejected(key: str, parser: Any) -> None:
    assert code_of(lambda: parser(key)) == "bad_key"


def test_signer_key_round_trip_and_bad_names() -> None:
    skey = format_signer_key(ORIGIN, EXAMPLE_KEY)
    signer = parse_signer_key(skey)
    assert signer.key_id == EXAMPLE_VERIFIER.key_id
    assert "private_key" not in repr(signer)
    assert sign_note("x\n", signer.name, signer.private_key) == sign_note(
        "x\n", ORIGIN, EXAMPLE_KEY
    )
    for name in ("", "a+b", "a b", "a\tb", "a\u2003b"):
        assert code_of(lambda name=name: sign_note("x\n", name, EXAMPLE_KEY)) == "bad_key"
        assert (
            code_of(lambda name=name: format_verifier_key(name, EXAMPLE_KEY.public_key()))
            == "bad_key"
        )
    for text in ("no newline", "", "a\rb\n", "\x00\n"):
        assert code_of(lambda text=text: sign_note(text, ORIGIN, EXAMPLE_KEY)) == "malformed"


def test_checkpoint_parse_and_format() -> None:
    # The C2SP tlog-checkpoint example (its key is not published: parse only).
    sofa = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(sofa)
    assert (cp.origin, cp.size, cp.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert cp.format() == sofa
    with_ext = Checkpoint("o", 0, EMPTY_ROOT, ("ext one", "— 2"))
    assert Checkpoint.parse(with_ext.format()) == with_ext
    assert with_ext.format().endswith("=\next one\n— 2\n")


@pytest.mark.parametrize(
    "text",
    [
        "o\n08\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n+8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n 8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n1_0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n\u0668\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n-1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        f"o\n{2**64}\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "\n8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n",
        "o\n8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "o\n8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=\n",
        "o\n8\n47DEQpj8HBSa-_TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
        "o\n8\nZG9uJ3QgY2FyZSAx\n",
        "o\n8\n",
    ],
)
def test_bad_checkpoints_rejected(text: str) -> None:
    assert code_of(lambda: Checkpoint.parse(text)) == "bad_checkpoint"


def test_checkpoint_constructor_validates() -> None:
    bad: list[tuple[Any, ...]] = [
        ("", 1, EMPTY_ROOT),
        ("o\n", 1, EMPTY_ROOT),
        ("o", -1, EMPTY_ROOT),
        ("o", True, EMPTY_ROOT),
        ("o", 1, b"x" * 31),
        ("o", 1, EMPTY_ROOT, ("",)),
    ]
    for args in bad:
        assert code_of(lambda args=args: Checkpoint(*args)) == "bad_checkpoint"


def test_verify_checkpoint_origin() -> None:
    note = sign_note(Checkpoint("elsewhere/log", 1, EMPTY_ROOT).format(), ORIGIN, EXAMPLE_KEY)
    assert code_of(lambda: verify_checkpoint(note, EXAMPLE_VERIFIER)) == "wrong_origin"
    assert verify_checkpoint(note, EXAMPLE_VERIFIER, origin="elsewhere/log").size == 1


note_text = st.lists(
    st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), max_size=30), min_size=1
).map(lambda lines: "".join(f"{line}\n" for line in lines))


@given(note_text)
def test_sign_verify_round_trip(text: str) -> None:
    """Any valid text (blank lines, Unicode, dashes) round-trips and is bound by the signature."""
    note = sign_note(text, ORIGIN, EXAMPLE_KEY)
    assert verify_note(note, EXAMPLE_VERIFIER) == text
    assert code_of(lambda: verify_note("x" + note, EXAMPLE_VERIFIER)) == "bad_signature"


@given(
    st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
)
def test_checkpoint_round_trip(origin: str, size: int, root: bytes) -> None:
    cp = Checkpoint(origin, size, root)
    assert Checkpoint.parse(cp.format()) == cp


# --- witness cosignatures (C2SP tlog-cosignature, cosignature/v1) ---------------------------

PETER_SEED = bytes.fromhex("810a1402d5146c8d84f2443330f54080ebf98ee17d9c74f6252fc5d5c7283173")
COSIGNER = note_mod.Cosigner(
    "witness.example/w1",
    key_id(
        "witness.example/w1",
        Ed25519PrivateKey.from_private_bytes(PETER_SEED).public_key(),
        note_mod.ALG_COSIGNATURE_V1,
    ),
    Ed25519PrivateKey.from_private_bytes(PETER_SEED),
)
T0 = 1_765_000_000  # 2025-12-06T05:46:40Z


def test_cosigner_key_id_and_key_strings() -> None:
    """Key ID from the C2SP formula with type 0x04, written out here rather than reused."""
    pub = COSIGNER.private_key.public_key().public_bytes_raw()
    expected = hashlib.sha256(b"witness.example/w1\n\x04" + pub).digest()[:4]
    assert COSIGNER.key_id == expected
    vkey = COSIGNER.verifier_key
    b64 = base64.b64encode(b"\x04" + pub).decode()
    assert vkey == f"witness.example/w1+{expected.hex()}+{b64}"
    verifier = note_mod.parse_cosigner_vkey(vkey)
    assert (verifier.name, verifier.key_id) == (COSIGNER.name, COSIGNER.key_id)
    skey = note_mod.format_cosigner_skey(COSIGNER)
    assert skey.startswith("PRIVATE+KEY+witness.example/w1+")
    again = note_mod.parse_cosigner_skey(skey)
    assert again.key_id == COSIGNER.key_id
    assert "private_key" not in repr(again)
    # The same Ed25519 key as a note key (type 0x01) has another key ID.
    assert key_id(COSIGNER.name, COSIGNER.private_key.public_key()) != COSIGNER.key_id


@needs_vectors
def test_cosigner_from_the_shared_vectors_key() -> None:
    """The Go vectors' signer seed as a witness key: type 0x04 changes the key ID and string."""
    v = go_vectors()
    peter = parse_signer_key(v["signer_key"])
    assert peter.private_key.private_bytes_raw() == PETER_SEED
    pub = peter.private_key.public_key().public_bytes_raw()
    vkey = note_mod.format_cosigner_vkey(peter.name, peter.private_key.public_key())
    kid = hashlib.sha256(peter.name.encode() + b"\n\x04" + pub).digest()[:4]
    b64 = base64.b64encode(b"\x04" + pub).decode()
    assert vkey == f"PeterNeumann+{kid.hex()}+{b64}"
    assert code_of(lambda: parse_verifier_key(vkey)) == "bad_key"  # a 0x04 key is no note key
    assert code_of(lambda: note_mod.parse_cosigner_vkey(v["verifier_key"])) == "bad_key"
    assert code_of(lambda: note_mod.parse_cosigner_skey(v["signer_key"])) == "bad_key"


# Frozen known answer (Ed25519 is deterministic); tests/crypto/test_interop_go.py has Go's
# sumdb/note with an independent cosignature/v1 verifier accept this same line.
KAT_LINE = (
    "— witness.example/w1 "
    "zJpwRAAAAABpM8NAzLWMc6JZd8ud2gw717Kwp6c3OIyKe4Igi5CNXoP0tkKP"
    "ol/jviNRCA98MdUov1hXtppExVHh7j33BydswYuCDw=="
)


def test_cosignature_known_answer() -> None:
    line = note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0)
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == COSIGNER.key_id
    assert raw[4:12] == T0.to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1765000000\n" + EXAMPLE_NOTE.split("\n\n")[0].encode() + b"\n"
    COSIGNER.private_key.public_key().verify(raw[12:], message)
    assert line == KAT_LINE
    # Text or note: the same line.
    assert note_mod.cosign(EXAMPLE_NOTE.split("\n\n")[0] + "\n", COSIGNER, T0) == line


def _verifier() -> note_mod.CosignerVerifier:
    return note_mod.parse_cosigner_vkey(COSIGNER.verifier_key)


def test_cosigned_note_verifies_for_both_keys() -> None:
    line = note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0)
    cosigned = note_mod.add_signatures(EXAMPLE_NOTE, [line])
    assert cosigned == EXAMPLE_NOTE + line + "\n"
    assert note_mod.add_signatures(cosigned, [line, line + "\n"]) == cosigned  # no repeats
    assert note_mod.verify_cosignature(cosigned, _verifier()) == T0
    # The log's verifier ignores the witness's line; the witness's ignores the log's.
    assert verify_checkpoint(cosigned, EXAMPLE_VERIFIER).size == 8
    assert code_of(lambda: note_mod.verify_cosignature(EXAMPLE_NOTE, _verifier())) == "unverified"
    later = note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0 + 60)
    assert note_mod.verify_cosignature(cosigned + later + "\n", _verifier()) == T0 + 60


def test_a_cosignature_covers_the_whole_body_and_its_time() -> None:
    line = note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0)
    cosigned = note_mod.add_signatures(EXAMPLE_NOTE, [line])
    other = cosigned.replace("\n8\n", "\n9\n")
    assert code_of(lambda: note_mod.verify_cosignature(other, _verifier())) == "bad_signature"
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[11] ^= 1  # another timestamp under the same signature
    moved = cosigned.replace(line.split(" ")[2], base64.b64encode(bytes(raw)).decode())
    assert code_of(lambda: note_mod.verify_cosignature(moved, _verifier())) == "bad_signature"
    # Extension lines are part of the signed body.
    root = base64.b64decode(EXAMPLE_NOTE.split("\n")[2])
    text = Checkpoint(ORIGIN, 8, root, ("ext: one",)).format()
    signed = sign_note(text, ORIGIN, EXAMPLE_KEY)
    with_ext = note_mod.add_signatures(signed, [note_mod.cosign(signed, COSIGNER, T0)])
    assert note_mod.verify_cosignature(with_ext, _verifier()) == T0
    dropped = with_ext.replace("ext: one\n", "ext: two\n")
    assert code_of(lambda: note_mod.verify_cosignature(dropped, _verifier())) == "bad_signature"
    # A bad line of the pinned key rejects the note even beside a good one.
    bad = with_ext + note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0) + "\n"
    assert code_of(lambda: note_mod.verify_cosignature(bad, _verifier())) == "bad_signature"


def test_wrong_key_types_and_lengths() -> None:
    # The log's note key is no witness key, and a note signature is no cosignature.
    assert code_of(lambda: note_mod.parse_cosigner_vkey(EXAMPLE_VKEY)) == "bad_key"
    assert code_of(lambda: parse_verifier_key(COSIGNER.verifier_key)) == "bad_key"
    note_skey = format_signer_key(ORIGIN, EXAMPLE_KEY)
    assert code_of(lambda: note_mod.parse_cosigner_skey(note_skey)) == "bad_key"
    as_note_sig = sign_note(EXAMPLE_NOTE.split("\n\n")[0] + "\n", COSIGNER.name, EXAMPLE_KEY)
    assert code_of(lambda: note_mod.verify_cosignature(as_note_sig, _verifier())) == "unverified"
    line = note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0)
    raw = base64.b64decode(line.split(" ")[2])
    short = f"— {COSIGNER.name} {base64.b64encode(raw[:-1]).decode()}"
    cut = note_mod.add_signatures(EXAMPLE_NOTE, [short])
    assert code_of(lambda: note_mod.verify_cosignature(cut, _verifier())) == "bad_signature"
    bad_vkey = COSIGNER.verifier_key.replace("+", "+0", 1)
    assert code_of(lambda: note_mod.parse_cosigner_vkey(bad_vkey)) == "bad_key"


def test_bad_timestamps() -> None:
    for t in (-1, 2**63, 2**64, True, 1.5):
        assert code_of(lambda t=t: note_mod.cosign(EXAMPLE_NOTE, COSIGNER, t)) == "bad_timestamp"
    assert note_mod.cosign(EXAMPLE_NOTE, COSIGNER, 2**63 - 1)  # the largest allowed
    # A line carrying a timestamp of 2^63 (signed over it anyway) is refused as such.
    sig = COSIGNER.private_key.sign(
        b"cosignature/v1\ntime 9223372036854775808\n"
        + EXAMPLE_NOTE.split("\n\n")[0].encode()
        + b"\n"
    )
    raw = COSIGNER.key_id + (2**63).to_bytes(8, "big") + sig
    line = f"— {COSIGNER.name} {base64.b64encode(raw).decode()}"
    future = note_mod.add_signatures(EXAMPLE_NOTE, [line])
    assert code_of(lambda: note_mod.verify_cosignature(future, _verifier())) == "bad_timestamp"


def test_malformed_notes_and_texts_rejected_for_cosigning() -> None:
    line = note_mod.cosign(EXAMPLE_NOTE, COSIGNER, T0)
    cosigned = note_mod.add_signatures(EXAMPLE_NOTE, [line])
    for bad in (cosigned + "extra\n", cosigned.replace("\n\n", "\n"), cosigned[:-1]):
        assert code_of(lambda bad=bad: note_mod.verify_cosignature(bad, _verifier())) == "malformed"
    assert code_of(lambda: note_mod.cosign("not a checkpoint\n", COSIGNER, T0)) == "bad_checkpoint"
    assert code_of(lambda: note_mod.add_signatures(EXAMPLE_NOTE, ["- x AAAAAAA="])) == "malformed"
    for name in ("", "a+b", "a b"):
        assert code_of(lambda name=name: note_mod.Cosigner.generate(name)) == "bad_key"
