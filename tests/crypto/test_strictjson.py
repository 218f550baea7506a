"""Strict JSON: what two parsers could read differently is refused."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.crypto import strictjson
from broker.errors import PROBLEMS
from tests.crypto.envelope_world import raises

i_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-strictjson.MAX_SAFE_INTEGER, strictjson.MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), inner, max_size=4)
    ),
    max_leaves=20,
)


class TestLoads:
    @given(i_json)
    def test_round_trip(self, value: object) -> None:
        assert strictjson.loads(strictjson.dumps(value)) == value

    def test_accepts_plain_json(self) -> None:
        text = '{"a": [1, -2.5, true, null, "é\\u00e9\\ud83d\\ude00"], "b": {}}'
        assert strictjson.loads(text.encode()) == json.loads(text)

    @pytest.mark.parametrize(
        ("text", "code"),
        [
            ('{"a": 1, "a": 2}', "envelope.duplicate_key"),
            ('{"x": {"a": 1, "b": 2, "a": 1}}', "envelope.duplicate_key"),
            ('{"a": NaN}', "envelope.not_i_json"),
            ("[Infinity]", "envelope.not_i_json"),
            ("-Infinity", "envelope.not_i_json"),
            ("1e400", "envelope.not_i_json"),
            ("9007199254740992", "envelope.not_i_json"),
            ("-9007199254740992", "envelope.not_i_json"),
            ("1" * 5000, "envelope.not_i_json"),
            ('"\\ud800"', "envelope.not_i_json"),
            ('["ok", "\\udfff"]', "envelope.not_i_json"),
            ('{"\\udc00": 1}', "envelope.not_i_json"),
            ("{'a': 1}", "envelope.malformed"),
            ('{"a": 1} x', "envelope.malformed"),
            ("\ufeff{}", "envelope.malformed"),
            ("", "envelope.malformed"),
        ],
    )
    def test_refuses(self, text: str, code: str) -> None:
        with raises(code):
            strictjson.loads(text.encode())

    def test_refuses_invalid_utf8(self) -> None:
        with raises("envelope.malformed"):
            strictjson.loads(b'"\xed\xa0\x80"')  # a surrogate encoded as UTF-8 (CESU-8)

    def test_escaped_backslash_u_is_not_a_surrogate(self) -> None:
        assert strictjson.loads(b'"\\\\ud800"') == "\\ud800"

    def test_safe_integer_bounds(self) -> None:
        assert strictjson.loads(b"[9007199254740991,-9007199254740991]") == [2**53 - 1, 1 - 2**53]

    def test_depth_limit(self) -> None:
        assert strictjson.loads(b"[" * 4 + b"]" * 4, max_depth=4) == [[[[]]]]
        with raises("envelope.too_deep"):
            strictjson.loads(b"[" * 5 + b"]" * 5, max_depth=4)
        with raises("envelope.too_deep"):
            strictjson.loads(b'{"a":' * 5 + b"{}" + b"}" * 5, max_depth=5)

    def test_recursion_bomb(self) -> None:
        with raises("envelope.too_deep"):
            strictjson.loads(b"[" * 100_000 + b"]" * 100_000)

    def test_size_limit(self) -> None:
        with raises("envelope.too_large") as info:
            strictjson.loads(b"[" + b"1," * 100 + b"1]", max_bytes=100)
        assert PROBLEMS[info.value.code][0] == 413


class TestDumps:
    def test_compact_utf8(self) -> None:
        assert strictjson.dumps({"a": [1, "é→"], "b": None}) == '{"a":[1,"é→"],"b":null}'.encode()

    @pytest.mark.parametrize(
        "value",
        [
            {1: "a", "1": "b"},
            {"a": math.nan},
            [math.inf],
            2**53,
            "\ud800",
            {"\udc00": 1},
            {"a": b"bytes"},
            {"a": {1, 2}},
        ],
    )
    def test_refuses_what_loads_would_refuse(self, value: object) -> None:
        with raises("envelope.not_i_json"):
            strictjson.dumps(value)

    def test_depth_limit(self) -> None:
        with raises("envelope.too_deep"):
            strictjson.dumps([[[]]], max_depth=2)


class TestCanonicalEqual:
    def test_member_order_ignored(self) -> None:
        assert strictjson.canonical_equal({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1})

    @pytest.mark.parametrize(("a", "b"), [(1, True), (1, 1.0), (0, False), ({"v": 1}, {"v": True})])
    def test_python_equal_but_json_different(self, a: object, b: object) -> None:
        assert a == b
        assert not strictjson.canonical_equal(a, b)

    def test_array_order_matters(self) -> None:
        assert not strictjson.canonical_equal(["HK-CED", "KR-KCS"], ["KR-KCS", "HK-CED"])
