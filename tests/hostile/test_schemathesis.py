"""Schema-driven API fuzzing (schemathesis 4) against the live ASGI app, once per role.

The OpenAPI document is loaded from the running app (`schemathesis.openapi.from_asgi`), and
every operation is driven with generated positive and negative requests through Hypothesis
(`APIOperation.as_strategy`), authenticated as admin, auditor, agency and focal point, and then
as another agency (KR-KCS) whose path parameters are pinned to a VN-GDC -> HK-CED alert: a
broken-object-level-authorization probe. Checks on every response:

- `not_a_server_error`, `status_code_conformance`, `content_type_conformance` and
  `response_schema_conformance` (schemathesis built-ins: no 500, and every status, media type
  and body is the one the OpenAPI document declares);
- for the other agency, nothing of the alert (mid, envelope hash, receipt, envelope bytes, in
  plain or base64 form) appears in any response.

Bounded for CI: HOSTILE_FUZZ_EXAMPLES examples per operation and identity (default 4, with
`derandomize` so CI runs are reproducible); HOSTILE_FUZZ_RANDOM=1 explores new inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.auth.service import Role
from tests.conftest import server_lock
from tests.hostile.conftest import SENDER_FP, gated_routes, make_token
from tests.hostile.leaks import needles
from tests.messages.conftest import Exchange, relay

pytestmark = pytest.mark.hostile

EXAMPLES = int(os.environ.get("HOSTILE_FUZZ_EXAMPLES", "4"))
RANDOM = os.environ.get("HOSTILE_FUZZ_RANDOM", "") == "1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Operations outside the fuzz: the OpenAPI document itself.
SKIP = {("GET", "/openapi.json")}


@dataclass
class Victim:
    """A VN-GDC -> HK-CED alert, and what of it no other agency may ever see."""

    mid: str
    secrets: list[bytes]
    path_values: dict[str, str]


@dataclass
class Tally:
    cases: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def victim(armed: Exchange) -> Victim:
    with server_lock(exclusive=False):  # a module fixture: outside its tests' hold on the lock
        response, routing, envelope = armed.send()
        assert response.status_code == 201, response.text
        relay()
    receipt = response.json()
    secrets = [
        routing["mid"].encode(),
        receipt["envelope_sha256"].encode(),
        receipt["receipt"].encode(),
        envelope[-64:].encode(),
    ]
    return Victim(
        mid=routing["mid"],
        secrets=[n for s in secrets for n in needles(s)],
        path_values={
            "mid": routing["mid"],
            "agency_id": "VN-GDC",
            "slug": "fp-hcm-01",
            "agreement_id": "VN-HK-CMAA-2013",
            "kid": armed.signing[SENDER_FP].kid,
        },
    )


@pytest.fixture(scope="module")
def schema(app: Any, armed: Exchange) -> Iterator[Any]:
    from schemathesis.python import asgi

    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield loaded
    asgi.shutdown_lifespans()  # the app's lifespan that schemathesis started for its calls


IDENTITIES = {
    "admin": ("admin", {}),
    "auditor": ("auditor", {"audit_agencies": ["VN-GDC", "HK-CED"]}),
    "agency": ("agency", {"agency_id": "HK-CED"}),
    "focal_point": ("focal_point", {"focal_point_id": SENDER_FP}),
    "other_agency": ("agency", {"agency_id": "KR-KCS"}),
    "other_focal_point": ("focal_point", {"focal_point_id": "KR-KCS/fp-01"}),
}
_tallies: dict[str, Tally] = {}


def _operations(schema: Any) -> list[Any]:
    ops = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in SKIP:
            ops.append(op)
    return ops


def _query_names(op: Any) -> set[str]:
    raw = op.definition.raw if hasattr(op, "definition") else {}
    return {p.get("name") for p in raw.get("parameters", []) if p.get("in") == "query"}


def _params(op: Any, values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if "{" + k + "}" in op.path}


# admin last: its fuzzing writes registry objects the others do not need.
ORDER = ["other_agency", "other_focal_point", "agency", "focal_point", "auditor", "admin"]


def _roles(app: Any) -> dict[tuple[str, str], frozenset[Role]]:
    """(method, path) -> the roles its RoleGate admits (routes without one are left out)."""
    return {(method, path): roles for method, path, roles in gated_routes(app)}


@dataclass
class Probe:
    """One identity's fuzzing session: its credentials and what it may never see."""

    who: str
    headers: dict[str, str]
    secrets: list[bytes]
    tally: Tally
    failures: list[str] = field(default_factory=list)

    def fuzz(self, op: Any, strategy: Any, examples: int) -> None:
        """Drive one operation with `examples` generated cases; record failures."""

        @given(case=strategy)
        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            self.check(op, case)

        try:
            run()
        except Exception:
            if not self.failures:
                raise

    def check(self, op: Any, case: Any) -> None:
        response = case.call(headers=self.headers, timeout=45)
        self.tally.cases += 1
        status = response.status_code
        self.tally.by_status[status] = self.tally.by_status.get(status, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS, headers=self.headers)
        except Exception as exc:
            self.failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:1500]}")
            raise
        if self.secrets:
            # What the request itself carried (a pinned mid) may come back in an error.
            sent = str(response.request.url).encode() + (response.request.body or b"")
            leaked = [s for s in self.secrets if s in response.content and s not in sent]
            if leaked:
                self.failures.append(
                    f"{self.who} {case.method} {case.formatted_path} {status} "
                    f"revealed {leaked[:1]!r}: {response.text[:300]}"
                )
                raise AssertionError(self.failures[-1])


@pytest.mark.parametrize("who", ORDER)
def test_api_fuzz(
    who: str, backend: str, app: Any, schema: Any, victim: Victim, armed: Exchange
) -> None:
    role, binding = IDENTITIES[who]
    probe = Probe(
        who=who,
        headers={"Authorization": f"Bearer {make_token(role, **binding)}"},
        secrets=victim.secrets if who.startswith("other_") else [],
        tally=_tallies.setdefault(f"{backend}/{who}", Tally()),
    )
    roles = _roles(app)
    operations = _operations(schema)
    for op in operations:
        allowed = roles.get((op.method.upper(), op.path))
        # A role the route refuses is answered 403 by the gate before anything else is read:
        # a couple of examples show that; the budget goes to the routes the role may call.
        examples = EXAMPLES if allowed is None or Role(role) in allowed else 2
        # Valid long-polls would only spend the budget waiting (up to 30 s each).
        query = {"wait": 0} if "wait" in _query_names(op) else None
        strategies = [
            op.as_strategy(GenerationMode.POSITIVE, query=query),
            op.as_strategy(GenerationMode.NEGATIVE),
        ]
        pinned = _params(op, victim.path_values)
        if pinned:  # the same operation aimed at the victim's objects
            strategies.append(
                op.as_strategy(GenerationMode.POSITIVE, path_parameters=pinned, query=query)
            )
        probe.fuzz(op, st.one_of(strategies), examples * len(strategies))
    assert not probe.failures, "\n\n".join(probe.failures[:5])
    assert probe.tally.cases >= len(operations) * 2


def test_fuzz_counts(backend: str, schema: Any) -> None:
    """Report the counts quoted in docs/security-testing.md (runs after the fuzz)."""
    tallies = [t for key, t in _tallies.items() if key.startswith(f"{backend}/")]
    if not tallies:
        pytest.skip("runs after test_api_fuzz")
    total = sum(t.cases for t in tallies)
    statuses: dict[int, int] = {}
    for tally in tallies:
        for status, n in tally.by_status.items():
            statuses[status] = statuses.get(status, 0) + n
    print(
        f"\nschemathesis {backend}: {len(_operations(schema))} operations, {total} cases, {statuses}"
    )
    assert total > 0
    assert 500 not in statuses
