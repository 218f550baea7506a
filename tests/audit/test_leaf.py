"""Leaf documents: the fast encoder is exactly RFC 8785, renaming is reversible, odd values are safe."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import leaf
from broker.crypto import jcs

# JSON values as they come back from the database: no floats (those are normalised first).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(max_size=20),
)
keys = st.one_of(st.text(max_size=8), st.sampled_from(["kind", "v", "detail_kind", "sender"]))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(st.dictionaries(keys, values, max_size=8))
def test_fast_encoding_is_rfc8785(details: dict[str, Any]) -> None:
    doc = leaf.leaf_document(kind="k", index=1, ts=2, actor="a", subject="VN-GDC", details=details)
    try:
        expected = jcs.leaf_bytes(doc)
    except jcs.CanonicalError:
        return  # lone surrogates: refused by both (the fast path falls back to rfc8785)
    assert leaf.encode(doc) == expected
    one_pass = leaf.leaf_bytes(
        kind="k", index=1, ts=2, actor="a", subject="VN-GDC", details=details
    )
    assert one_pass == expected


@given(st.dictionaries(keys, values, max_size=8))
def test_details_survive_the_renaming(details: dict[str, Any]) -> None:
    doc = leaf.leaf_document(kind="k", index=1, ts=2, actor="a", subject=None, details=details)
    assert leaf.details_of(doc) == details


def test_envelope_fields_cannot_be_shadowed() -> None:
    doc = leaf.leaf_document(
        kind="msg.accepted",
        index=7,
        ts=1,
        actor="fp",
        subject="VN-GDC",
        details={"kind": "alert", "index": 99, "detail_x": 1, "v": 2},
    )
    assert doc["kind"] == "msg.accepted"
    assert doc["index"] == 7
    assert doc["v"] == 1
    assert doc["detail_kind"] == "alert"
    assert doc["detail_index"] == 99
    assert doc["detail_detail_x"] == 1
    assert leaf.details_of(doc) == {"kind": "alert", "index": 99, "detail_x": 1, "v": 2}


def test_floats_and_big_integers_never_stall_the_log() -> None:
    doc = leaf.leaf_document(
        kind="k",
        index=0,
        ts=0,
        actor="a",
        subject=None,
        details={"whole": 3.0, "part": 0.5, "big": 2**60, "nested": [1.0, {"x": 1e300}]},
    )
    data = leaf.encode(doc)
    assert json.loads(data)["whole"] == 3
    assert json.loads(data)["part"] == "0.5"
    assert json.loads(data)["big"] == str(2**60)
    assert data == jcs.leaf_bytes(doc)


def test_non_ascii_keys_use_the_full_encoder() -> None:
    doc = leaf.leaf_document(
        kind="k", index=0, ts=0, actor="a", subject=None, details={"\U0001f600": 1, "\ufb01": 2}
    )
    assert leaf.encode(doc) == jcs.leaf_bytes(doc)


def test_which_agencies_an_event_names() -> None:
    named = leaf.agencies_named
    ids = {"VN-GDC", "HK-CED", "KR-KCS", "NZ-POL"}
    assert named({"subject": "VN-GDC"}, ids) == {"VN-GDC"}
    assert named({"subject": "VN-GDC/fp-hcm-01"}, ids) == {"VN-GDC"}
    assert named({"sender": "VN-GDC", "recipients": ["HK-CED", "KR-KCS"]}, ids) == {
        "VN-GDC",
        "HK-CED",
        "KR-KCS",
    }
    assert named({"recipient": "NZ-POL", "agency": "HK-CED"}, ids) == {"NZ-POL", "HK-CED"}
    assert named({"subject": "principal:x", "filters": {"agency": "VN-GDC"}}, ids) == set()


# Details as the database returns them to the sequencer: JSON text, floats and all (a JSONB
# column keeps them), escaped (SQLite's JSON column) or raw UTF-8 (PostgreSQL's jsonb::text).
raw_scalars = st.one_of(
    scalars,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, -0.0, 0.5, 1e300, 2.0**60, 123456789.125]),
)
raw_values = st.recursive(
    raw_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(st.dictionaries(keys, raw_values, max_size=8), st.booleans())
def test_leaf_from_json_text_equals_the_reference(details: dict[str, Any], escaped: bool) -> None:
    text = json.dumps(details, ensure_ascii=escaped)
    envelope: dict[str, Any] = {"kind": "k", "index": 3, "ts": 4, "actor": "a", "subject": None}
    fast = leaf.leaf_bytes_from_json(details_json=text, **envelope)
    assert fast == leaf.leaf_bytes(details=json.loads(text), **envelope)
    doc = leaf.leaf_document(details=json.loads(text), **envelope)
    # Lone surrogates: refused by rfc8785, escaped alike by both of ours.
    with contextlib.suppress(jcs.CanonicalError):
        assert fast == jcs.leaf_bytes(doc)


def test_leaf_from_json_text_edge_cases() -> None:
    envelope: dict[str, Any] = {"kind": "k", "index": 0, "ts": 0, "actor": "a", "subject": "s"}
    empty = leaf.leaf_bytes(details={}, **envelope)
    assert leaf.leaf_bytes_from_json(details_json="{}", **envelope) == empty
    assert leaf.leaf_bytes_from_json(details_json="null", **envelope) == empty
    shadow = '{"kind": "alert", "index": 9, "detail_v": 1, "n": 2.0, "big": 9007199254740993}'
    data = leaf.leaf_bytes_from_json(details_json=shadow, **envelope)
    assert json.loads(data) == {
        **{"v": 1, "kind": "k", "index": 0, "ts": 0, "actor": "a", "subject": "s"},
        **{"detail_kind": "alert", "detail_index": 9, "detail_detail_v": 1, "n": 2},
        "big": "9007199254740993",
    }


JCS_VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "jcs" / "testdata"
MISSING = f"JCS test vectors not found at {JCS_VECTORS}"


def jcs_vectors() -> list[Any]:
    files = sorted((JCS_VECTORS / "input").glob("*.json"))
    if files:
        return [pytest.param(f.name, id=f.stem) for f in files]
    marks = () if os.environ.get("CI") == "true" else pytest.mark.skip(reason=MISSING)
    return [pytest.param(None, id="missing", marks=marks)]


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return isinstance(value, list) and any(_has_float(v) for v in value)


@pytest.mark.parametrize("name", jcs_vectors())
def test_leaf_encoders_reproduce_the_jcs_vectors(name: str | None) -> None:
    """Each cyberphone vector, nested under key "x", through all three leaf encoders.

    "x" sorts after every envelope key, so the leaf must be the envelope followed by the
    vector's expected output, byte for byte. Vectors with floats (which leaves never carry)
    must instead come out with the floats normalised, the same from every encoder.
    """
    assert name is not None, MISSING
    raw = (JCS_VECTORS / "input" / name).read_text(encoding="utf-8")
    expected = (JCS_VECTORS / "output" / name).read_bytes()
    envelope: dict[str, Any] = {"kind": "k", "index": 1, "ts": 2, "actor": "a", "subject": None}
    details = {"x": json.loads(raw)}
    doc = leaf.leaf_document(details=details, **envelope)
    outputs = {
        leaf.encode(doc),
        leaf.leaf_bytes(details=details, **envelope),
        leaf.leaf_bytes_from_json(details_json='{"x": ' + raw + "}", **envelope),
        leaf.leaf_bytes_from_json(details_json=json.dumps(details, ensure_ascii=False), **envelope),
    }
    assert len(outputs) == 1
    prefix = b'{"actor":"a","index":1,"kind":"k","subject":null,"ts":2,"v":1,"x":'
    if _has_float(details):
        with pytest.raises(jcs.CanonicalError):
            jcs.leaf_bytes({**envelope, "x": json.loads(raw)})
        assert outputs.pop() == jcs.leaf_bytes(doc)
    else:
        assert outputs.pop() == prefix + expected + b"}"
