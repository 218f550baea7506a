"""Coverage-guided fuzzing of the broker's envelope checks (atheris, libFuzzer).

Targets, all on the broker's hot path before anything is stored:
`broker.crypto.envelope.parse_outer_header`, `verify_outer` and `check_jwe_structure`, and
`broker.crypto.strictjson.loads`. The only exceptions allowed out are `CryptoError` subclasses
(each carries its stable code and 4xx status); anything else - a TypeError, KeyError,
RecursionError, MemoryError, a timeout - is a finding and stops the run with the input saved.

Each input picks one of five shapes (first byte), so that mutations reach past the signature:

0. the whole envelope string (header, payload and signature as sent);
1. a payload signed here with the harness key, so verify_outer always reaches the strict
   parse and the payload checks, then check_jwe_structure on the JWE it carries;
2. a protected header signed here, with a valid payload;
3. raw bytes to strictjson.loads;
4. a valid payload with one JWE or routing member replaced by a fuzzed value, signed here.

Short run (what tests/hostile/test_fuzz.py does):

    .venv/bin/python fuzz/fuzz_envelope.py -atheris_runs=20000 /tmp/corpus-envelope

Long run (nightly; CPU and memory bombs count as findings):

    .venv/bin/python fuzz/fuzz_envelope.py -max_total_time=3600 -rss_limit_mb=512 \\
        -timeout=1 fuzz/corpus/envelope

An empty corpus directory is seeded with valid envelopes and the malformed shapes of the
reliability-security.md 5.2 corpus before fuzzing starts.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["broker.crypto"]):
    from broker.crypto import envelope as env
    from broker.crypto import strictjson
    from broker.crypto.errors import CryptoError
    from broker.crypto.keys import EncryptionKey, SigningKey, b64u_encode

SIGNER = SigningKey.from_seed(bytes(range(32)))
RECIPIENTS = {
    "HK-CED": EncryptionKey.from_seed(bytes(range(32, 64))),
    "KR-KCS": EncryptionKey.from_seed(bytes(range(64, 96))),
}
EXPECTED_KIDS = {agency: [key.kid] for agency, key in RECIPIENTS.items()}
ROUTING = {
    "v": 1,
    "kind": "alert",
    "mid": "019ab0a2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",
    "iat": 1795000000,
    "exp": 1795604800,
    "sender": "VN-GDC",
    "sender_fp": "VN-GDC/fp-hcm-01",
    "recipients": ["HK-CED", "KR-KCS"],
    "agreement": "MEKONG-DRAGON",
    "operation": None,
    "offence": "narcotics",
    "subject_types": ["person"],
    "priority": "urgent",
    "handling": "TLP:AMBER",
}
HEADER = {"alg": "Ed25519", "kid": SIGNER.kid, "typ": env.TYP_OUTER}
MAX_SIZE = 64 * 1024


def _compact(header: bytes, payload: bytes) -> str:
    signing_input = f"{b64u_encode(header)}.{b64u_encode(payload)}"
    return f"{signing_input}.{b64u_encode(SIGNER.sign(signing_input.encode('ascii')))}"


def _valid_envelope() -> str:
    keys = {agency: key.public for agency, key in RECIPIENTS.items()}
    return env.build_envelope(ROUTING, {"title": "t", "subjects": []}, SIGNER, keys)


VALID = _valid_envelope()
_, VALID_PAYLOAD_B64, _ = VALID.split(".")
VALID_PAYLOAD = json.loads(env.b64u_decode(VALID_PAYLOAD_B64))
HEADER_BYTES = json.dumps(HEADER, separators=(",", ":")).encode()


def _broker_checks(envelope: str) -> None:
    """What the broker runs on a submission, in order, minus the database look-ups."""
    env.parse_outer_header(envelope, MAX_SIZE)
    outer = env.verify_outer(envelope, SIGNER.public, max_size=MAX_SIZE)
    env.check_jwe_structure(outer.jwe, EXPECTED_KIDS)


# Places in a valid payload where shape 4 puts a fuzzed value.
PLACES: list[tuple[str | int, ...]] = [
    ("routing",),
    ("jwe",),
    ("jwe", "protected"),
    ("jwe", "iv"),
    ("jwe", "ciphertext"),
    ("jwe", "tag"),
    ("jwe", "recipients"),
    ("jwe", "recipients", 0),
    ("jwe", "recipients", 0, "header"),
    ("jwe", "recipients", 0, "encrypted_key"),
    ("jwe", "recipients", 0, "header", "alg"),
    ("jwe", "recipients", 0, "header", "kid"),
    ("jwe", "recipients", 0, "header", "epk"),
    ("jwe", "recipients", 0, "header", "epk", "x"),
    ("jwe", "recipients", 0, "header", "epk", "crv"),
    ("jwe", "recipients", 1, "header", "kid"),
]


def _fuzzed_value(fdp: atheris.FuzzedDataProvider) -> object:
    """A JSON value from the remaining bytes, or a string/number/bytes-as-base64url."""
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        return strictjson.loads(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 120))
    if kind == 2:
        return b64u_encode(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
    return fdp.ConsumeIntInRange(-(2**53), 2**53)


def _replace(doc: object, place: tuple[str | int, ...], value: object) -> None:
    *parents, last = place
    for step in parents:
        doc = doc[step]  # type: ignore[index]
    doc[last] = value  # type: ignore[index]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    shape, rest = data[0] % 5, data[1:]
    try:
        if shape == 0:
            _broker_checks(rest.decode("utf-8", "surrogateescape"))
        elif shape == 1:
            _broker_checks(_compact(HEADER_BYTES, rest))
        elif shape == 2:
            _broker_checks(_compact(rest, json.dumps(VALID_PAYLOAD).encode()))
        elif shape == 3:
            strictjson.loads(rest)
        else:
            fdp = atheris.FuzzedDataProvider(rest)
            payload = copy.deepcopy(VALID_PAYLOAD)
            place = PLACES[fdp.ConsumeIntInRange(0, len(PLACES) - 1)]
            _replace(payload, place, _fuzzed_value(fdp))
            _broker_checks(_compact(HEADER_BYTES, strictjson.dumps(payload)))
    except CryptoError:
        pass


def seeds() -> list[bytes]:
    """Valid inputs of every shape and the malformed shapes of the 5.2 corpus."""
    payload = json.dumps(VALID_PAYLOAD, separators=(",", ":")).encode()
    jwe = VALID_PAYLOAD["jwe"]
    variants = [
        {
            **VALID_PAYLOAD,
            "jwe": {**jwe, "protected": b64u_encode(b'{"enc":"A256GCM","zip":"DEF"}')},
        },
        {**VALID_PAYLOAD, "jwe": {**jwe, "tag": jwe["tag"][:8]}},
        {**VALID_PAYLOAD, "jwe": {**jwe, "recipients": jwe["recipients"][:1]}},
        {**VALID_PAYLOAD, "routing": "x"},
        [VALID_PAYLOAD],
    ]
    headers = [
        {**HEADER, "alg": "none"},
        {**HEADER, "jwk": SIGNER.public.jwk},
        {**HEADER, "crit": ["bork"], "bork": 1},
        {**HEADER, "zip": "DEF"},
        {"alg": "HS256", "kid": SIGNER.kid, "typ": env.TYP_OUTER},
    ]
    out = [b"\x00" + VALID.encode(), b"\x01" + payload, b"\x02" + HEADER_BYTES]
    out += [b"\x01" + json.dumps(v).encode() for v in variants]
    out += [b"\x02" + json.dumps(h).encode() for h in headers]
    out += [b"\x04" + bytes([i, 0]) + b'"x"' for i in range(len(PLACES))]
    out += [
        b"\x01" + payload.replace(b'"routing"', b'"routing":{},"routing"', 1),
        b"\x03" + b"[" * 5000,
        b'\x03{"a":1,"a":2}',
        b'\x03["\\ud800"]',
        b"\x03[1e400, 9007199254740993, NaN]",
        b"\x03\xef\xbb\xbf{}",
    ]
    return out


def seed_corpus(argv: list[str]) -> None:
    dirs = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if dirs and dirs[0].is_dir() and not any(dirs[0].iterdir()):
        for i, seed in enumerate(seeds()):
            (dirs[0] / f"seed-{i:03d}").write_bytes(seed)


if __name__ == "__main__":
    seed_corpus(sys.argv)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
