"""RFC 8785 canonical JSON against cyberphone/json-canonicalization, and the log leaf encoding."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.crypto.jcs import CanonicalError, canonical, leaf_bytes

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "jcs" / "testdata"
MISSING = f"JCS test vectors not found at {VECTORS}"


def vector_params() -> list[Any]:
    files = sorted((VECTORS / "input").glob("*.json"))
    if files:
        return [pytest.param(f.name, id=f.stem) for f in files]
    marks = () if os.environ.get("CI") == "true" else pytest.mark.skip(reason=MISSING)
    return [pytest.param(None, id="missing", marks=marks)]


@pytest.mark.parametrize("name", vector_params())
def test_jcs_vector(name: str | None) -> None:
    assert name is not None, MISSING
    out = canonical(json.loads((VECTORS / "input" / name).read_text(encoding="utf-8")))
    assert out == (VECTORS / "output" / name).read_bytes()
    assert out == bytes.fromhex((VECTORS / "outhex" / name.replace(".json", ".txt")).read_text())


EVENT = {
    "v": 1,
    "kind": "msg.accepted",
    "index": 1042,
    "ts": 1767225603123,
    "mid": "0190f3c2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",
    "recipients": ["HK-CED", "KR-KCS"],
    "ok": True,
    "reason": None,
}


def test_leaf_bytes_sorted_compact_utf8() -> None:
    assert leaf_bytes(EVENT) == (
        b'{"index":1042,"kind":"msg.accepted","mid":"0190f3c2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",'
        b'"ok":true,"reason":null,"recipients":["HK-CED","KR-KCS"],"ts":1767225603123,"v":1}'
    )
    assert leaf_bytes({"s": "é€\u2028"}) == '{"s":"é€\u2028"}'.encode()
    assert leaf_bytes({"t": ("a", {"b": 1})}) == b'{"t":["a",{"b":1}]}'


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"ts": 1.0}, "/ts: floats"),
        ({"a": [1, {"b": 2.5}]}, "/a/1/b: floats"),
        ({"n": float("nan")}, "floats"),
        ({"n": 2**53}, "safe integer"),
        ({"n": -(2**53)}, "safe integer"),
        ({1: "x"}, "keys must be strings"),
        ({"s": "\ud800"}, "non-UTF-8"),
        ({"b": b"bytes"}, "unsupported type"),
        ({"s": {1, 2}}, "unsupported type"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_leaf_bytes_rejects(event: Any, match: str) -> None:
    with pytest.raises(CanonicalError, match=match):
        leaf_bytes(event)


def test_canonical_accepts_floats() -> None:
    assert canonical({"x": 1e30, "y": 4.50}) == b'{"x":1e+30,"y":4.5}'


json_ints = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_ints, max_size=6))
def test_leaf_bytes_is_a_fixed_point(event: dict[str, Any]) -> None:
    """Parsing leaf bytes and encoding again gives the same bytes (auditors rebuild them)."""
    out = leaf_bytes(event)
    assert json.loads(out) == event
    assert leaf_bytes(json.loads(out)) == out
