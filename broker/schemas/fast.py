"""A yes/no fast path: compile a schema into nested Python predicates.

jsonschema spends most of a routing check resolving `$ref`s and creating validator objects
(about 500 us per header); these predicates answer "valid?" in a few microseconds. They cover
only the keywords the contract uses and raise `Unsupported` for anything else, in which case
callers keep using jsonschema alone. They only ever say yes or no: every "no" is explained by
running jsonschema, whose answer also wins if the two ever disagree. A differential test
(`tests/schemas/test_fast.py`) checks that they agree on examples and on generated mutations.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urldefrag, urljoin

from jsonschema import FormatChecker
from referencing import Registry

Check = Callable[[Any], bool]

ANNOTATIONS: Final = frozenset(
    {"$schema", "$defs", "$comment", "title", "description", "examples", "default"}
)


class Unsupported(Exception):
    """The schema uses a keyword or construct the fast path does not implement."""


_PY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
# Keywords that constrain only one kind of instance, and that kind.
_APPLIES_TO: Final[dict[str, str]] = {
    **dict.fromkeys(("pattern", "format", "minLength", "maxLength"), "string"),
    **dict.fromkeys(("minimum", "maximum", "exclusiveMinimum"), "number"),
    **dict.fromkeys(("minItems", "maxItems", "uniqueItems", "items"), "array"),
    **dict.fromkeys(
        ("minProperties", "required", "dependentRequired", "properties", "additionalProperties"),
        "object",
    ),
}


def _guard(kind: str, check: Check) -> Check:
    """Apply `check` only to instances of `kind`; others pass, as JSON Schema says."""
    if kind == "number":
        return lambda x: isinstance(x, bool) or not isinstance(x, int | float) or check(x)
    py = _PY_TYPES[kind]
    return lambda x: not isinstance(x, py) or check(x)


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]

    def conjunction(x: Any) -> bool:
        for check in checks:  # noqa: SIM110 - a loop is faster than all() over a generator
            if not check(x):
                return False
        return True

    return conjunction


def _equal(a: object, b: object) -> bool:
    """JSON equality as jsonschema defines it: booleans never equal numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return a == b


def _unique(items: list[Any]) -> bool:
    if all(isinstance(x, str) for x in items):
        return len(set(items)) == len(items)
    return not any(_equal(a, b) for i, a in enumerate(items) for b in items[i + 1 :])


def _each(item: Check) -> Check:
    def each(x: list[Any]) -> bool:
        for i in x:  # noqa: SIM110 - as above
            if not item(i):
                return False
        return True

    return each


def _members(props: dict[str, Check]) -> Check:
    def members(x: dict[str, Any]) -> bool:
        for k, v in x.items():
            check = props.get(k)
            if check is not None and not check(v):
                return False
        return True

    return members


def _extras(known: frozenset[str], extra: Check) -> Check:
    def extras(x: dict[str, Any]) -> bool:
        for k, v in x.items():  # noqa: SIM110 - as above
            if k not in known and not extra(v):
                return False
        return True

    return extras


class Compiler:
    """Compiles schemas of one registry, resolving `$ref`s at compile time."""

    def __init__(self, registry: Registry[Any], format_checker: FormatChecker) -> None:
        self._registry = registry
        self._formats = format_checker
        self._compiled: dict[str, Check] = {}
        self._lock = threading.RLock()  # first calls may come from several threads at once

    def compile(self, uri: str) -> Check:
        """The predicate of the schema at absolute `uri` (fragment allowed)."""
        with self._lock:
            return self._compile(uri)

    def _compile(self, uri: str) -> Check:
        if uri not in self._compiled:
            cell: list[Check] = []
            self._compiled[uri] = lambda x: cell[0](x)  # lets recursive $refs compile
            base = urldefrag(uri).url
            contents = self._registry.resolver().lookup(uri).contents
            cell.append(self._node(contents, base))
            self._compiled[uri] = cell[0]
        return self._compiled[uri]

    def _node(self, schema: Any, base: str) -> Check:
        """Generic checks apply to any instance; typed ones only to their kind of instance,
        so each kind's checks run behind one isinstance test."""
        if isinstance(schema, bool):
            return lambda x: schema
        if not isinstance(schema, Mapping):
            raise Unsupported(f"schema of type {type(schema).__name__}")
        generic: list[Check] = []
        typed: dict[str, list[Check]] = {}
        for keyword, value in schema.items():
            if keyword in ANNOTATIONS or keyword in {"then", "else"}:
                continue
            if keyword == "$id" and value == base:
                continue
            check = self._keyword(keyword, value, schema, base)
            if keyword in _APPLIES_TO:
                typed.setdefault(_APPLIES_TO[keyword], []).append(check)
            else:
                generic.append(check)
        common = _all(generic)
        guarded = [_guard(kind, _all(checks)) for kind, checks in typed.items()]
        if not guarded:
            return common
        return _all([common, *guarded] if generic else guarded)

    def _keyword(self, keyword: str, value: Any, schema: Mapping[str, Any], base: str) -> Check:
        match keyword:
            case "$ref":
                return self._compile(urljoin(base, value))
            case "type":
                names = [value] if isinstance(value, str) else value
                accepted = tuple(t for name in names for t in _PY_TYPES[name])
                bool_ok = "boolean" in names
                return lambda x: bool_ok if isinstance(x, bool) else isinstance(x, accepted)
            case "const":
                return lambda x: _equal(x, value)
            case "enum":
                if all(isinstance(v, str) for v in value):
                    members = frozenset(value)
                    return lambda x: isinstance(x, str) and x in members
                return lambda x: any(_equal(x, v) for v in value)
            case "pattern":
                search = re.compile(value).search
                return lambda x: search(x) is not None
            case "format":
                conforms = self._formats.conforms
                return lambda x: conforms(x, value)
            case "minLength" | "minItems" | "minProperties":
                return lambda x: len(x) >= value
            case "maxLength" | "maxItems":
                return lambda x: len(x) <= value
            case "minimum":
                return lambda x: x >= value
            case "maximum":
                return lambda x: x <= value
            case "exclusiveMinimum":
                return lambda x: x > value
            case "uniqueItems":
                return _unique if value else lambda x: True
            case "items":
                return _each(self._node(value, base))
            case "required":
                required = tuple(value)
                return lambda x: all(k in x for k in required)
            case "dependentRequired":
                deps = {k: tuple(v) for k, v in value.items()}
                return lambda x: all(
                    all(d in x for d in needed) for k, needed in deps.items() if k in x
                )
            case "properties":
                return _members({k: self._node(v, base) for k, v in value.items()})
            case "additionalProperties":
                if "patternProperties" in schema:
                    raise Unsupported("patternProperties")
                return _extras(frozenset(schema.get("properties", ())), self._node(value, base))
            case "allOf":
                parts = [self._node(v, base) for v in value]
                return lambda x: all(part(x) for part in parts)
            case "not":
                negated = self._node(value, base)
                return lambda x: not negated(x)
            case "if":
                condition = self._node(value, base)
                then = self._node(schema.get("then", True), base)
                else_ = self._node(schema.get("else", True), base)
                return lambda x: then(x) if condition(x) else else_(x)
        raise Unsupported(keyword)
