"""The OpenAPI document an integrator reads: auth, examples, error codes, no developer notes.

Walks `/openapi.json` of the application as served. Every operation that needs a token
declares the bearer scheme (from its role gate); every request body and every error response
has examples; every example validates against its schema; descriptions speak to integrators;
docs/reason-codes.md is the generated list of every code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
# Words of the developers' notes (ARCHITECTURE.md decisions, STYLE.md, research/, the hot
# path, implementation classes) that have no place in what an integrator reads.
INTERNAL = re.compile(
    r"ARCHITECTURE|STYLE|\bdecision \d|hot path|research|issue \d|transaction|(?-i:`_[A-Z]\w+)|"
    r"session|commit|role gate|PROTOCOL 4|thread",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def app() -> Any:
    from broker.main import create_app

    return create_app()


@pytest.fixture(scope="module")
def spec(app: Any) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    response = TestClient(app).get("/openapi.json")  # no lifespan: the document needs no DB
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield f"{method.upper()} {path}", op


def _gated(app: Any) -> dict[str, bool]:
    """Each documented operation, and whether its dependencies include a role gate."""
    from fastapi.routing import APIRoute, _iter_included_route_candidates

    from broker.deps import RoleGate

    def gates(dependant: Any) -> bool:
        return isinstance(dependant.call, RoleGate) or any(gates(d) for d in dependant.dependencies)

    return {
        f"{method} {route.path}": gates(route.dependant)
        for route in _iter_included_route_candidates(app.routes)
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    }


def test_every_gated_operation_declares_the_bearer_scheme(app: Any, spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == (
        "http",
        "bearer",
        "brk_...",
    )
    documented = {name: op.get("security") for name, op in operations(spec)}
    gated = _gated(app)
    assert set(gated) == set(documented)
    wrong = {
        name: security
        for name, security in documented.items()
        if security != ([{"bearer": []}] if gated[name] else None)
    }
    assert wrong == {}
    assert not gated["GET /health/live"]  # the walk sees both kinds
    assert gated["GET /v1/me"]


def test_every_request_body_has_an_example(spec: dict[str, Any]) -> None:
    missing = [
        f"{name} {media}"
        for name, op in operations(spec)
        for media, content in op.get("requestBody", {}).get("content", {}).items()
        if not (content.get("examples") or "example" in content)
    ]
    assert missing == []


def test_every_error_response_has_an_example_of_each_code(spec: dict[str, Any]) -> None:
    from broker.errors import PROBLEMS

    problems = []
    for name, op in operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            content = response.get("content", {})
            if not content:
                problems.append(f"{name} {status}: no content")
            for media, body in content.items():
                examples = body.get("examples") or {}
                if not examples and "example" not in body:
                    problems.append(f"{name} {status} {media}: no example")
                if media != "application/problem+json":
                    continue
                for code, example in examples.items():
                    value = example["value"]
                    if (value["code"], value["status"]) != (code, int(status)):
                        problems.append(f"{name} {status}: example {code} says {value}")
                    if PROBLEMS[code] != (value["status"], value["title"]):
                        problems.append(f"{name} {status}: {code} differs from PROBLEMS")
    assert problems == []


def test_descriptions_speak_to_integrators(spec: dict[str, Any]) -> None:
    texts = {
        name: f"{op.get('summary', '')}\n{op.get('description', '')}"
        for name, op in operations(spec)
    }
    texts["info"] = spec["info"]["description"]
    leaks = {name: INTERNAL.findall(text) for name, text in texts.items() if INTERNAL.search(text)}
    assert leaks == {}
    assert all(op.get("description") for _, op in operations(spec))


def test_the_note_check_can_fail() -> None:
    assert INTERNAL.search("The hot path skips this (ARCHITECTURE decision 9).")
    assert INTERNAL.search("answers with `_Waiting` after the commit")
    assert not INTERNAL.search("Items after the cursor in inbox order; 429 when all are held.")


def _examples(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) for every example of the document."""
    for name, op in operations(spec):
        bodies = [("request", op.get("requestBody", {})), *op["responses"].items()]
        for status, holder in bodies:
            for media, content in holder.get("content", {}).items():
                if "json" not in media:
                    continue
                schema = content.get("schema", {})
                if "example" in content:
                    yield f"{name} {status} {media}", schema, content["example"]
                for key, example in (content.get("examples") or {}).items():
                    yield f"{name} {status} {media} {key}", schema, example["value"]
    for model, schema in spec["components"]["schemas"].items():
        for n, example in enumerate(schema.get("examples", [])):
            yield f"{model} example {n}", schema, example
        for prop, sub in schema.get("properties", {}).items():
            for n, example in enumerate(sub.get("examples", [])):
                yield f"{model}.{prop} example {n}", sub, example


def test_every_example_validates_against_its_schema(spec: dict[str, Any]) -> None:
    components = {"components": spec["components"]}
    found, invalid = 0, []
    for where, schema, example in _examples(spec):
        found += 1
        validator = Draft202012Validator({**schema, **components})
        errors = [e.message for e in validator.iter_errors(example)]
        if errors:
            invalid.append(f"{where}: {errors[0]}")
    assert invalid == []
    assert found > 300  # the walk reaches the error examples too


def test_a_rotten_example_is_caught(spec: dict[str, Any]) -> None:
    schema = {"$ref": "#/components/schemas/AgencyIn", "components": spec["components"]}
    rotten = {"id": "VN-GDC", "name": "Customs", "country": "VN", "kind": "navy"}
    assert list(Draft202012Validator(schema).iter_errors(rotten))


def test_the_reason_codes_document_is_current(spec: dict[str, Any]) -> None:
    from broker.errors import reason_codes_markdown

    written = (ROOT / "docs" / "reason-codes.md").read_text(encoding="utf-8")
    assert written == reason_codes_markdown(spec), "stale: run `python -m broker.errors`"


def _codes_in_source() -> set[str]:
    """Every code the source names where it declares or raises one (`code=`, `code = `)."""
    found: set[str] = set()
    for path in (ROOT / "broker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            keyword = isinstance(node, ast.keyword) and node.arg == "code"
            assign = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "code" for t in node.targets
            )
            value = getattr(node, "value", None) if keyword or assign else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(value.value)
    from broker.agreements.policy import CODES

    return found | set(CODES)


def test_every_code_is_documented(spec: dict[str, Any]) -> None:
    from broker.errors import PROBLEMS, not_in_api, operations_by_code

    raised = _codes_in_source() - {"crypto.error"}  # the crypto base: always a subclass's code
    assert len(raised) > 100
    assert sorted(raised - set(PROBLEMS)) == []
    returned = operations_by_code(spec)
    written = (ROOT / "docs" / "reason-codes.md").read_text(encoding="utf-8")
    undocumented = [code for code in PROBLEMS if f"| `{code}` |" not in written]
    nowhere = [code for code in PROBLEMS if code not in returned and not_in_api(code) is None]
    both = [code for code in returned if not_in_api(code) is not None]
    assert (undocumented, nowhere, both) == ([], [], [])


def test_a_routing_example_keeps_its_null_members(spec: dict[str, Any]) -> None:
    """FastAPI drops null members when it renders the document; the broker puts them back."""
    from broker.schemas import validate_routing

    body = spec["paths"]["/v1/messages:check"]["post"]["requestBody"]["content"]
    routing = body["application/json"]["examples"]["alert"]["value"]["routing"]
    assert routing["operation"] is None
    validate_routing(routing)  # the example is one the broker accepts
