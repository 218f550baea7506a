"""The compiled fast path agrees with jsonschema, which stays the reference."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from broker import schemas
from broker.schemas.fast import Compiler, Unsupported
from broker.schemas.validation import FORMAT_CHECKER, fast_check

NAMES = [n for n in schemas.names() if schemas.load(n).get("examples")]


def _scalars(node: Any) -> set[Any]:
    if isinstance(node, dict):
        return {s for k, v in node.items() for s in _scalars(k) | _scalars(v)}
    if isinstance(node, list):
        return {s for v in node for s in _scalars(v)}
    return {node}


# Every scalar that occurs in any schema or example (enum members, ids, dates, codes, patterns,
# keywords, property names), plus near misses: mutations then land on both sides of each rule.
POOL = sorted(
    (s for name in schemas.names() for s in _scalars(schemas.load(name)) if s is not None),
    key=repr,
)
KEYS = [p for p in POOL if isinstance(p, str)]
NEAR_MISSES = [
    "CSQU3054384", "IMO9074728", "020-12345674", "QQABC", "UK", "1987-02-30", "29329", "770000",
    "0190E353-3700-7A1C-9D2E-5B8F4A1C2D3E", "", "vn-gdc", "P", "PT", "2024-07-01T00:00:00",
    "TLP:amber", 1.0, 0, -1, 1.5, True, False, 2**53, 1e300,
]  # fmt: skip
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.sampled_from(POOL),
        st.sampled_from(NEAR_MISSES),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=6,
)


def _containers(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [node, *(c for child in node.values() for c in _containers(child))]
    if isinstance(node, list):
        return [node, *(c for child in node for c in _containers(child))]
    return []


def _mutate(document: Any, data: st.DataObject) -> Any:
    containers = _containers(document)
    if not containers:
        return data.draw(VALUES)
    target = data.draw(st.sampled_from(containers))
    operation = data.draw(st.sampled_from(["set", "delete", "add"]))
    if isinstance(target, dict):
        keys = sorted(target)
        if operation == "add" or not keys:
            target[data.draw(st.sampled_from(KEYS))] = data.draw(VALUES)
        elif operation == "delete":
            del target[data.draw(st.sampled_from(keys))]
        else:
            target[data.draw(st.sampled_from(keys))] = data.draw(VALUES)
    elif operation == "add" or not target:
        target.append(data.draw(VALUES))
    elif operation == "delete":
        del target[data.draw(st.integers(0, len(target) - 1))]
    else:
        target[data.draw(st.integers(0, len(target) - 1))] = data.draw(VALUES)
    return document


_FIXED: list[Any] = [None, True, False, 0, 1, -1, 0.5, 1.0, "", "x", [], {}]
# Every bound the schemas state (minimum, maxItems, ...), to land exactly on the edges.
_BOUNDS = sorted(
    {n for name in schemas.names() for n in _scalars(schemas.load(name)) if type(n) is int}
)


def _bump(char: str) -> str:
    """The next character of the same class (digit or letter), wrapping round."""
    for alphabet in ("0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"):
        if char in alphabet:
            return alphabet[(alphabet.index(char) + 1) % len(alphabet)]
    return char + "X"


def _leaf_variants(value: Any, extra_members: dict[str, Any]) -> list[Any]:
    variants = list(_FIXED)
    if isinstance(value, str) and value:
        variants += [value + "X", value[:-1], value.lower(), value.upper(), value * 300]
        variants += [value[:-1] + _bump(value[-1]), value[-2::-1] + value[-1]]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        variants += [value - 1, value + 1, value + 0.5, float(value), -value]
        variants += [b + d for b in _BOUNDS for d in (-1, 0, 1)]
    elif isinstance(value, list) and value:
        variants += [[], value + value[:1], value[::-1], [*value, None], value * 65]
    elif isinstance(value, dict):
        variants += [value | {"unexpected": 1}]
        variants += [value | {k: v} for k, v in extra_members.items() if k not in value]
    return variants


def _neighbours(document: Any, extra_members: dict[str, Any]) -> list[Any]:
    """Every document one edit away: each member deleted, each value replaced by variants,
    and each member seen elsewhere in the examples added."""
    found: list[Any] = []

    def visit(node: Any, rebuild: Any) -> None:
        for variant in _leaf_variants(node, extra_members):
            found.append(rebuild(variant))
        if isinstance(node, dict):
            for key, child in node.items():
                found.append(rebuild({k: v for k, v in node.items() if k != key}))
                visit(child, lambda v, key=key: rebuild(node | {key: v}))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                visit(child, lambda v, i=i: rebuild([*node[:i], v, *node[i + 1 :]]))

    visit(document, lambda v: copy.deepcopy(v))
    return found


def _members(node: Any) -> dict[str, Any]:
    if isinstance(node, list):
        return {k: v for child in node for k, v in _members(child).items()}
    if isinstance(node, dict):
        return {k: v for child in node.values() for k, v in _members(child).items()} | node
    return {}


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_agrees_on_every_single_edit_of_the_examples(name: str) -> None:
    check = fast_check(name)
    assert check is not None
    reference = schemas.validator(name)
    verdicts = set()
    examples = schemas.load(name)["examples"]
    for example in examples:
        for document in _neighbours(example, _members(examples)):
            verdict = reference.is_valid(document)
            assert check(document) == verdict, document
            verdicts.add(verdict)
    assert verdicts == {True, False}


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_agrees_with_jsonschema(name: str, data: st.DataObject) -> None:
    examples = schemas.load(name)["examples"]
    document = copy.deepcopy(data.draw(st.sampled_from(examples)))
    for _ in range(data.draw(st.integers(1, 3))):
        document = _mutate(document, data)
    check = fast_check(name)
    assert check is not None
    assert check(document) == schemas.validator(name).is_valid(document)


def test_unsupported_keywords_fall_back_to_jsonschema() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:test:one-of",
        "oneOf": [{"type": "string"}, {"type": "integer"}],
    }
    registry: Registry[Any] = Registry().with_resource(
        "urn:test:one-of", DRAFT202012.create_resource(schema)
    )
    with pytest.raises(Unsupported, match="oneOf"):
        Compiler(registry, FORMAT_CHECKER).compile("urn:test:one-of")


def test_recursive_refs_compile() -> None:
    check = fast_check("log-leaf")
    assert check is not None
    leaf = {"v": 1, "kind": "admin.changed", "index": 0, "ts": 0, "x": [[[{"y": [1]}]]]}
    assert check(leaf)
    leaf["x"][0][0][0]["y"] = [0.5]
    assert not check(leaf)
