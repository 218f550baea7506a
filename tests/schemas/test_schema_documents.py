"""The schema files themselves: metaschema, ids, refs, strictness, examples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing.exceptions import Unresolvable

from broker import schemas
from broker.schemas.validation import _compiler

NAMES = schemas.names()
DOCUMENT_NAMES = [n for n in NAMES if n != "v1/defs"]
EXAMPLES = [
    pytest.param(name, example, id=f"{name}[{i}]")
    for name in NAMES
    for i, example in enumerate(schemas.load(name).get("examples", []))
]


def _walk(
    node: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in {"examples", "enum", "const"}:
                yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def test_expected_schemas_are_packaged() -> None:
    assert NAMES == [
        "v1/ack",
        "v1/agreement",
        "v1/agreement-approval",
        "v1/body/alert",
        "v1/body/feedback",
        "v1/body/subject",
        "v1/defs",
        "v1/log-leaf",
        "v1/operation",
        "v1/recall",
        "v1/recall-compliance",
        "v1/receipt",
        "v1/routing",
        "v1/world",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_valid_against_the_2020_12_metaschema(name: str) -> None:
    document = schemas.load(name)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)


@pytest.mark.parametrize("name", NAMES)
def test_id_title_description(name: str) -> None:
    document = schemas.load(name)
    assert document["$id"] == f"https://schemas.exchange-broker.example/{name}.json"
    assert document["title"]
    assert document["description"]


@pytest.mark.parametrize("name", DOCUMENT_NAMES)
def test_every_document_schema_has_examples(name: str) -> None:
    assert schemas.load(name)["examples"]


@pytest.mark.parametrize("name", NAMES)
def test_every_ref_resolves_locally(name: str) -> None:
    document = schemas.load(name)
    resolver = schemas.registry().resolver(document["$id"])
    refs = [
        node["$ref"] for _, node in _walk(document) if isinstance(node, dict) and "$ref" in node
    ]
    for ref in refs:
        resolver.lookup(ref)  # raises Unresolvable
    assert refs or name == "v1/defs"


@pytest.mark.parametrize("name", NAMES)
def test_objects_forbid_unknown_members(name: str) -> None:
    """Every schema that lists properties also says what to do with others, except
    conditional overlays (if/then/else) and the discriminated union's root."""
    for path, node in _walk(schemas.load(name)):
        if not isinstance(node, dict) or "properties" not in node:
            continue
        if {"if", "then", "else"} & {p for p in path if isinstance(p, str)}:
            continue
        if name == "v1/body/subject" and path == ():
            assert all({"if", "then"} <= branch.keys() for branch in node["allOf"])
            continue
        assert "additionalProperties" in node, (name, path)
        if name != "v1/log-leaf":
            assert node["additionalProperties"] is False, (name, path)


@pytest.mark.parametrize("name", NAMES)
def test_no_floats_in_log_leaf_and_integers_typed(name: str) -> None:
    """Numbers that must be integers are typed so; only seizure quantities may be fractional."""
    numbers = [
        path
        for path, node in _walk(schemas.load(name))
        if isinstance(node, dict) and node.get("type") == "number"
    ]
    expected = [("$defs", "seizure", "properties", "quantity", "properties", "value")]
    assert numbers == (expected if name == "v1/body/subject" else [])


@pytest.mark.parametrize(("name", "example"), EXAMPLES)
def test_examples_validate(name: str, example: Any) -> None:
    schemas.validate(name, example)
    assert not list(schemas.validator(name).iter_errors(example))  # without the fast path


@pytest.mark.parametrize("example", schemas.load("routing")["examples"])
def test_routing_examples_pass_the_cross_field_rules(example: dict[str, Any]) -> None:
    schemas.validate_routing(example)


def test_body_examples_match_routing_examples() -> None:
    alert_routing, feedback_routing = schemas.load("routing")["examples"][:2]
    schemas.validate_body(alert_routing, schemas.load("body/alert")["examples"][0])
    schemas.validate_body(feedback_routing, schemas.load("body/feedback")["examples"][0])


def test_every_schema_compiles_to_the_fast_path() -> None:
    assert all(schemas.validation.fast_check(name) is not None for name in NAMES)
    assert _compiler() is _compiler()


def test_names_are_flexible_and_load_returns_copies() -> None:
    assert schemas.load("routing") == schemas.load("v1/routing") == schemas.load("v1/routing.json")
    schemas.load("routing")["title"] = "changed"
    assert schemas.load("routing")["title"] == "Routing header v1"
    with pytest.raises(KeyError, match="no schema named 'nope'"):
        schemas.load("nope")
    with pytest.raises(KeyError):
        schemas.validate("nope", {})


def test_registry_never_retrieves_remote_refs() -> None:
    with pytest.raises(Unresolvable):
        schemas.registry().resolver().lookup("https://json-schema.org/draft/2020-12/schema")
    with pytest.raises(Unresolvable):
        schemas.registry().resolver().lookup("https://schemas.exchange-broker.example/v1/nope.json")
