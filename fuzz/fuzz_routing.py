"""Coverage-guided fuzzing of routing validation (atheris, libFuzzer).

Target: `schemas.validate_routing`, the broker's check of the signed routing header, fed
through `broker.crypto.strictjson.loads` as the broker feeds it. Only `SchemaError` (invalid
routing) and `CryptoError` (not strict JSON) may escape; anything else is a finding.

Each input picks a shape (first byte):

0. raw bytes, parsed and validated as a whole routing header;
1. a valid routing header with one member replaced by a fuzzed JSON value;
2. a valid routing header with one member replaced by a fuzzed string (identifiers: Unicode
   confusables, controls, very long values);
3. a valid routing header with a fuzzed extra member or a member removed.

Short run:  .venv/bin/python fuzz/fuzz_routing.py -atheris_runs=20000 /tmp/corpus-routing
Long run:   .venv/bin/python fuzz/fuzz_routing.py -max_total_time=3600 -rss_limit_mb=512 \\
                -timeout=1 fuzz/corpus/routing
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["broker.schemas", "broker.crypto.strictjson"]):
    from broker import schemas
    from broker.crypto import strictjson
    from broker.crypto.errors import CryptoError

ROUTING: dict[str, Any] = {
    "v": 1,
    "kind": "alert",
    "mid": "019ab0a2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",
    "iat": 1795000000,
    "exp": 1795604800,
    "sender": "VN-GDC",
    "sender_fp": "VN-GDC/fp-hcm-01",
    "recipients": ["CN-GACC", "HK-CED", "KR-KCS"],
    "agreement": "MEKONG-DRAGON",
    "operation": "MEKONG-DRAGON-V",
    "offence": "narcotics",
    "subject_types": ["conveyance", "person"],
    "priority": "urgent",
    "handling": "TLP:AMBER",
}
FEEDBACK = {
    **ROUTING,
    "kind": "feedback",
    "recipients": ["VN-GDC"],
    "sender": "HK-CED",
    "sender_fp": "HK-CED/fp-01",
    "in_reply_to": "019ab0a2-6a1e-7c3b-9d2e-5b8f4a1c2d3f",
    "outcome": "seized",
    "commodity": "narcotics",
    "quantity_band": "10_100kg",
}
MEMBERS = sorted(set(ROUTING) | set(FEEDBACK))


def _check(routing: object) -> None:
    with contextlib.suppress(schemas.SchemaError):
        schemas.validate_routing(routing)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, 3)
    base = copy.deepcopy(FEEDBACK if fdp.ConsumeBool() else ROUTING)
    member = MEMBERS[fdp.ConsumeIntInRange(0, len(MEMBERS) - 1)]
    try:
        if shape == 0:
            _check(strictjson.loads(fdp.ConsumeBytes(fdp.remaining_bytes())))
        elif shape == 1:
            base[member] = strictjson.loads(fdp.ConsumeBytes(fdp.remaining_bytes()))
            _check(strictjson.loads(strictjson.dumps(base)))
        elif shape == 2:
            text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
            if member == "recipients":
                base[member] = sorted({text, *base[member]})
            else:
                base[member] = text
            _check(base)
        else:
            if fdp.ConsumeBool():
                base.pop(member, None)
            else:
                base[fdp.ConsumeUnicodeNoSurrogates(40)] = fdp.ConsumeIntInRange(-(2**53), 2**53)
            _check(base)
    except CryptoError:
        pass


def seeds() -> list[bytes]:
    out = [b"\x00\x00" + json.dumps(ROUTING).encode(), b"\x00\x01" + json.dumps(FEEDBACK).encode()]
    for member, value in [
        ("recipients", ["CN-GАCC"]),
        ("sender", "ＶＮ-GDC"),
        ("recipients", [f"XA-R{i:03d}" for i in range(65)]),
        ("iat", 2**60),
        ("exp", -1),
        ("mid", "019AB0A2-6A1E-7C3B-9D2E-5B8F4A1C2D3E"),
        ("subject_types", ["person", "conveyance"]),
        ("sender_fp", "HK-CED/fp-01"),
        ("operation", None),
        ("handling", "TLP:RED\u200b"),
    ]:
        doc = {**ROUTING, member: value}
        out.append(b"\x00\x00" + json.dumps(doc, ensure_ascii=False).encode())
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
