"""Load, resolve and validate the contract schemas, offline.

All `$ref`s resolve through one local `referencing.Registry` built from the packaged files;
nothing is ever fetched (jsonschema would otherwise fetch remote refs over HTTP). Validators
are compiled once per schema and cached. Errors are collected, never first-only: a
`SchemaError` lists every invalid field as a JSON Pointer and a message, and the messages
never repeat the offending value (bodies can carry personal data and errors get logged).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Final

from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

# jsonschema imports every format backend it finds, and rfc3987-syntax (iri, iri-reference:
# formats the contract does not use) builds dozens of Lark grammars on import, most of a
# command's start-up (jsonschema#1428). Where it is installed anyway (another package's extra),
# a None in sys.modules makes that one import fail, which jsonschema skips; the real module stays
# importable afterwards.
_HIDDEN = "rfc3987_syntax"
_hide = _HIDDEN not in sys.modules
if _hide:
    sys.modules[_HIDDEN] = None  # type: ignore[assignment]
try:
    from jsonschema import Draft202012Validator, FormatChecker, TypeChecker, validators
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator
finally:
    if _hide:
        del sys.modules[_HIDDEN]

from broker.schemas.fast import Check, Compiler, Unsupported  # noqa: E402
from broker.schemas.formats import CUSTOM_FORMATS  # noqa: E402

BASE_URI: Final = "https://schemas.exchange-broker.example/"
CURRENT_VERSION: Final = "v1"

_VERSIONED = re.compile(r"v[0-9]+/")
_Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: where (RFC 6901 JSON Pointer, "" for the root) and why."""

    pointer: str
    message: str


class SchemaError(ValueError):
    """A document failed validation; `errors` lists every invalid field, sorted by pointer."""

    def __init__(self, errors: list[FieldError], *, schema: str = "") -> None:
        self.errors = errors
        self.schema = schema
        listing = "; ".join(f"{e.pointer or '(root)'}: {e.message}" for e in errors)
        super().__init__(f"invalid {schema or 'document'}: {listing}")


# --- Loading ---------------------------------------------------------------------------------


def _json_files(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _json_files(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".json"):
            yield f"{prefix}{entry.name[: -len('.json')]}", entry


@cache
def _documents() -> dict[str, dict[str, Any]]:
    """Every packaged schema by name (`v1/routing`, `v1/body/alert`, ...)."""
    root = files(__package__ or "broker.schemas")
    documents: dict[str, dict[str, Any]] = {}
    for entry in root.iterdir():
        if entry.is_dir() and _VERSIONED.fullmatch(entry.name + "/"):
            for name, file in _json_files(entry, f"{entry.name}/"):
                document = json.loads(file.read_text(encoding="utf-8"))
                if document.get("$id") != f"{BASE_URI}{name}.json":
                    raise RuntimeError(f"schema file {name}.json has $id {document.get('$id')!r}")
                documents[name] = document
    return documents


def _name(name: str) -> str:
    """`routing`, `v1/routing` and `v1/routing.json` all name `v1/routing`."""
    name = name.removesuffix(".json")
    return name if _VERSIONED.match(name) else f"{CURRENT_VERSION}/{name}"


def names() -> list[str]:
    """Names of all packaged schemas, sorted."""
    return sorted(_documents())


def load(name: str) -> dict[str, Any]:
    """A copy of the schema document `name` (for example `routing` or `body/alert`)."""
    try:
        return copy.deepcopy(_documents()[_name(name)])
    except KeyError:
        raise KeyError(f"no schema named {name!r}") from None


def _no_remote(uri: str) -> Resource[Any]:
    raise NoSuchResource(uri)


@cache
def registry() -> Registry[Any]:
    """The packaged schemas as a `referencing.Registry` that refuses to retrieve anything."""
    resources = [
        (document["$id"], DRAFT202012.create_resource(document))
        for document in _documents().values()
    ]
    return Registry(retrieve=_no_remote).with_resources(resources).crawl()  # type: ignore[call-arg]


# --- Validators ------------------------------------------------------------------------------


def _is_integer(_checker: TypeChecker, instance: object) -> bool:
    # JSON Schema counts 1.0 as an integer; the contract does not (log leaves are JCS-encoded
    # with integers only, NumericDates are integers), so Python-side a float never passes.
    return isinstance(instance, int) and not isinstance(instance, bool)


_ContractValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def _strings_only(check: Callable[[str], bool]) -> Callable[[object], bool]:
    def checker(instance: object) -> bool:
        return not isinstance(instance, str) or check(instance)

    return checker


# The standard formats the schemas use, chosen by name. jsonschema checks each through a package
# of the base dependencies (date-time: rfc3339-validator, duration: isoduration, uri:
# rfc3986-validator) and silently passes a format it has no checker for, hence the check here.
STANDARD_FORMATS: Final = ("date", "date-time", "duration", "uri", "uuid")


def _format_checker() -> FormatChecker:
    known = Draft202012Validator.FORMAT_CHECKER.checkers
    if missing := [f for f in STANDARD_FORMATS if f not in known]:
        raise ImportError(
            f"jsonschema has no checker for the format(s) {', '.join(missing)}: "
            "install the package's dependencies (rfc3339-validator, isoduration, rfc3986-validator)"
        )
    checker = FormatChecker(formats=())
    checker.checkers.update({f: known[f] for f in STANDARD_FORMATS})
    for fmt, check in CUSTOM_FORMATS.items():
        checker.checks(fmt)(_strings_only(check))
    return checker


FORMAT_CHECKER: Final = _format_checker()


@cache
def validator(name: str) -> Validator:
    """The compiled, cached validator for schema `name`, with the contract's formats."""
    document = _documents().get(_name(name))
    if document is None:
        raise KeyError(f"no schema named {name!r}")
    result: Validator = _ContractValidator(
        document, registry=registry(), format_checker=FORMAT_CHECKER
    )
    return result


@cache
def _compiler() -> Compiler:
    return Compiler(registry(), FORMAT_CHECKER)


@cache
def fast_check(name: str) -> Check | None:
    """The compiled yes/no predicate of schema `name` (see `schemas.fast`), or None when the
    schema uses something the fast path does not implement."""
    document = _documents().get(_name(name))
    if document is None:
        raise KeyError(f"no schema named {name!r}")
    try:
        return _compiler().compile(document["$id"])
    except Unsupported:
        return None


# --- Error reporting -------------------------------------------------------------------------


def _pointer(path: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _sort_key(item: tuple[_Path, str]) -> tuple[tuple[tuple[int, int, str], ...], str]:
    path, message = item
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path), message


def _count(n: int, keyword: str) -> str:
    unit = "character" if "Length" in keyword else "item" if "Items" in keyword else "member"
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _message(error: ValidationError) -> str:
    keyword = error.validator
    expected: Any = error.validator_value
    match keyword:
        case "type":
            types = [expected] if isinstance(expected, str) else list(expected)
            return "must be " + " or ".join(str(t) for t in types)
        case "enum":
            return "must be one of: " + ", ".join(json.dumps(v) for v in expected)
        case "const":
            return f"must be {json.dumps(expected)}"
        case "pattern":
            return f"does not match {expected}"
        case "format":
            return f"is not a valid {expected}"
        case "minLength" | "minItems" | "minProperties":
            return f"must have at least {_count(expected, keyword)}"
        case "maxLength" | "maxItems" | "maxProperties":
            return f"must have at most {_count(expected, keyword)}"
        case "uniqueItems":
            return "must not contain duplicates"
        case "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum":
            ops = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">"}
            return f"must be {ops.get(keyword, '<')} {expected}"
        case "not" if expected == {}:  # how the schemas forbid a member in some branch
            return "is not allowed here"
        case None:  # a `false` subschema (jsonschema drops its path, so the schemas avoid it)
            return "is not allowed here"
    return error.message[:200]


def _field_errors(error: ValidationError) -> Iterator[tuple[_Path, str]]:
    """Map one jsonschema error to (path, message) pairs that point at the field itself."""
    path: _Path = tuple(error.absolute_path)
    instance = error.instance
    keyword = error.validator
    expected: Any = error.validator_value
    if keyword == "required" and isinstance(instance, dict):
        for member in expected:
            if member not in instance:
                yield (*path, member), "is required"
    elif keyword == "dependentRequired" and isinstance(instance, dict):
        for present, needed in expected.items():
            if present in instance:
                for member in needed:
                    if member not in instance:
                        yield (*path, member), f"is required when {present} is present"
    elif keyword == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        for member in instance:
            if member not in known and not any(re.search(p, member) for p in patterns):
                yield (*path, member), "is not allowed"
    else:
        yield path, _message(error)


def _schema_errors(name: str, instance: object) -> list[tuple[_Path, str]]:
    fast = fast_check(name)
    if fast is not None and fast(instance):
        return []
    found: set[tuple[_Path, str]] = set()
    document: Any = instance
    for error in validator(name).iter_errors(document):
        found.update(_field_errors(error))
    return list(found)


def _raise(errors: list[tuple[_Path, str]], name: str) -> None:
    if errors:
        errors.sort(key=_sort_key)
        raise SchemaError([FieldError(_pointer(p), m) for p, m in errors], schema=_name(name))


def validate(name: str, instance: object) -> None:
    """Validate `instance` against schema `name`; raise `SchemaError` listing every problem.

    JSON Schema only: for routing headers call `validate_routing`, for bodies `validate_body`,
    which add the checks that JSON Schema cannot express.
    """
    _raise(_schema_errors(name, instance), name)


# --- Checks JSON Schema cannot express -------------------------------------------------------


def _str_list(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def routing_checks(routing: Mapping[str, Any]) -> list[tuple[_Path, str]]:
    """Cross-field rules of PROTOCOL.md 4.2 (tolerant of ill-typed members)."""
    errors: list[tuple[_Path, str]] = []
    sender = routing.get("sender")
    recipients = _str_list(routing.get("recipients"))
    if recipients is not None:
        if recipients != sorted(recipients):
            errors.append((("recipients",), "must be sorted"))
        if sender in recipients:
            errors.append((("recipients", recipients.index(sender)), "must not be the sender"))
    subject_types = _str_list(routing.get("subject_types"))
    if subject_types is not None and subject_types != sorted(subject_types):
        errors.append((("subject_types",), "must be sorted"))
    sender_fp = routing.get("sender_fp")
    if (
        isinstance(sender_fp, str)
        and isinstance(sender, str)
        and not sender_fp.startswith(f"{sender}/")
    ):
        errors.append((("sender_fp",), "must be a focal point of the sender"))
    iat, exp = routing.get("iat"), routing.get("exp")
    if type(iat) is int and type(exp) is int and exp <= iat:
        errors.append((("exp",), "must be later than iat"))
    if "audience" in routing and routing.get("operation") is None:
        errors.append((("audience",), "needs an operation whose members it names"))
    return errors


def validate_routing(routing: object) -> None:
    """Validate a routing header: the schema plus sortedness, sender not a recipient,
    sender_fp belonging to sender, exp after iat. The broker's hot path."""
    errors = _schema_errors("routing", routing)
    if isinstance(routing, dict):
        errors.extend(routing_checks(routing))
    _raise(errors, "routing")


def body_checks(routing: Mapping[str, Any], body: Mapping[str, Any]) -> list[tuple[_Path, str]]:
    """Alert labels: the body's subject types equal routing.subject_types, `ref`s are unique,
    and route conveyance refs name conveyance subjects of the same body."""
    subjects = body.get("subjects")
    if not isinstance(subjects, list):
        return []
    items = [(i, s) for i, s in enumerate(subjects) if isinstance(s, dict)]
    errors: list[tuple[_Path, str]] = []
    present = sorted({s["type"] for _, s in items if isinstance(s.get("type"), str)})
    declared = routing.get("subject_types")
    if present != declared:
        errors.append(
            (("subjects",), f"subject types {present} differ from routing subject_types {declared}")
        )
    refs: dict[str, str] = {}
    for i, subject in items:
        ref = subject.get("ref")
        if isinstance(ref, str):
            if ref in refs:
                errors.append((("subjects", i, "ref"), "duplicates an earlier ref"))
            refs.setdefault(ref, str(subject.get("type")))
    for i, subject in items:
        if subject.get("type") == "route":
            for j, ref in enumerate(_str_list(subject.get("conveyances")) or []):
                if refs.get(ref) != "conveyance":
                    errors.append(
                        (("subjects", i, "conveyances", j), "names no conveyance in this body")
                    )
    return errors


def validate_body(routing: Mapping[str, Any], body: object) -> None:
    """Validate a decrypted or to-be-encrypted `body` against its (already valid) routing:
    `body/alert` or `body/feedback` by routing.kind, plus `body_checks` for alerts."""
    name = "body/feedback" if routing.get("kind") == "feedback" else "body/alert"
    errors = _schema_errors(name, body)
    if name == "body/alert" and isinstance(body, dict):
        errors.extend(body_checks(routing, body))
    _raise(errors, name)
