"""Leaf documents: the fast encoder is exactly RFC 8785, renaming is reversible, odd values are safe."""

from __future__ import annotations

import json
from typing import Any

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
