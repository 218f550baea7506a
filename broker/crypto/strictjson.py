"""Strict JSON for signed payloads: I-JSON (RFC 7493) in, compact UTF-8 out.

Python's `json` accepts duplicate member names (last one wins), NaN and Infinity, numbers
that overflow to infinity, and `\\ud800` escapes that decode to lone surrogates. Two
parsers that disagree on such input see different payloads behind one signature, so
`loads` refuses all of them, plus integers outside the IEEE 754 safe range and nesting
deeper than `max_depth`.
"""

import json
import math
import re
from collections.abc import Callable
from typing import Any

from broker.crypto.errors import DuplicateKey, Malformed, NotIJson, TooDeep, TooLarge

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1

# Lone surrogates can only come from \u escapes (the input is valid UTF-8), so the tree is
# searched for them only when the text has such an escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [name for name, _ in pairs]
        raise DuplicateKey(f"duplicate member {next(n for n in names if names.count(n) > 1)!r}")
    return obj


def _constant(name: str) -> Any:
    raise NotIJson(f"{name} is not JSON")


def _int(text: str) -> int:
    # The length test keeps int() off million-digit strings before the range test.
    if len(text) > 17 or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise NotIJson(f"integer outside ±(2^53-1): {text[:20]}")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotIJson(f"number overflows a double: {text[:20]}")
    return value


Check = Callable[[Any], None]


def _check_tree(value: Any, max_depth: int, scalar: Check | None, name: Check | None) -> None:
    """Enforce `max_depth` on containers; run the checks on every scalar and member name."""
    # Level by level rather than recursively: no recursion limit, and on the hot path (both
    # checks None) each node costs one or two isinstance calls.
    level, depth = [value], 0
    while level:
        children: list[Any] = []
        nested = False
        for item in level:
            if isinstance(item, dict):
                nested = True
                if name is not None:
                    for member in item:
                        name(member)
                children.extend(item.values())
            elif isinstance(item, list | tuple):
                nested = True
                children.extend(item)
            elif scalar is not None:
                scalar(item)
        depth += nested
        if depth > max_depth:
            raise TooDeep(f"JSON nests deeper than {max_depth}")
        level = children


def _no_surrogate(item: Any) -> None:
    if isinstance(item, str) and _SURROGATE.search(item):
        raise NotIJson("lone surrogate in a string")


def _member_name(item: Any) -> None:
    if not isinstance(item, str):
        raise NotIJson(f"member name {item!r} is not a string")
    _no_surrogate(item)


def _serializable(item: Any) -> None:
    if item is None or isinstance(item, bool | str):
        _no_surrogate(item)
    elif isinstance(item, int):
        if abs(item) > MAX_SAFE_INTEGER:
            raise NotIJson(f"integer outside ±(2^53-1): {item}")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise NotIJson(f"{item} is not JSON")
    else:
        raise NotIJson(f"{type(item).__name__} is not a JSON value")


def loads(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse UTF-8 JSON bytes, refusing anything outside I-JSON or the limits."""
    if len(data) > max_bytes:
        raise TooLarge(f"JSON of {len(data)} bytes exceeds {max_bytes}")
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except UnicodeDecodeError as exc:
        raise Malformed("JSON is not valid UTF-8") from exc
    except RecursionError as exc:
        raise TooDeep("JSON nests too deeply") from exc
    except json.JSONDecodeError as exc:
        raise Malformed(f"not JSON: {exc}") from exc
    check = _no_surrogate if "\\u" in text and _SURROGATE_ESCAPE.search(text) else None
    _check_tree(value, max_depth, check, check)
    return value


def dumps(value: Any, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Serialize to compact UTF-8 JSON that `loads` accepts back unchanged."""
    # Without this check json.dumps turns {1: "a", "1": "b"} into duplicate members and
    # writes integers that other parsers round.
    _check_tree(value, max_depth, _serializable, _member_name)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def canonical_equal(a: Any, b: Any) -> bool:
    """Compare JSON values: member order ignored, but `1`, `1.0` and `true` all distinct."""

    # Python's == treats True == 1 == 1.0; sorted serializations do not.
    def key(v: Any) -> str:
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    return key(a) == key(b)
