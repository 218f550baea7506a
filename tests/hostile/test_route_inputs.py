"""Arbitrary Unicode in every query, path and form parameter of every route: never a 5xx.

The routes and their parameters are read from the application itself (`app.routes`, each
route's dependency tree, the mounted console and static files, routes outside the OpenAPI
document included), so a new route or parameter is fuzzed without a change here. Each request
carries a credential of a role the route admits (a bearer token for the API, a signed-in console
session for /console), so the input reaches the handler instead of stopping at 401.

Two passes, and neither may see a 5xx, nor an error the application logs while answering
(an unhandled exception in a response that had already started is no 500 for the client):

- the sweep, on both backends: each SWEEP value ('', NUL, '²', '٣', a number below the 64-bit
  integers) alone in each parameter in turn, the others at their defaults or real ids, so that
  nothing else in the request is refused first;
- Hypothesis, on PostgreSQL (the stricter backend): any mix of parameters, each any text
  without surrogates (control characters included), digits of other scripts, numbers past every
  integer type, strings of thousands of characters, the empty string, or real ids.

JSON bodies are not fuzzed here (schemathesis does that): a route with one gets a valid body,
so that its fuzzed parameters are not refused with the body. Console forms get the session's
own hidden fields (its form token) unless that is the field being fuzzed.

Bounded for CI: ROUTE_INPUT_EXAMPLES Hypothesis examples per route (default 6, derandomized so
that CI is reproducible); HOSTILE_FUZZ_RANDOM=1 explores new inputs. Routes left out: EXCLUDED
(none). Bugs found: KNOWN_BUGS, each with its own test (a strict xfail until fixed).
"""

from __future__ import annotations

import html as html_mod
import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, get_origin
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from broker.auth.service import Role
from broker.config import settings
from tests.conftest import bearer, server_lock
from tests.hostile.conftest import PATH_VALUES, SENDER_FP, make_token
from tests.messages.conftest import Exchange, relay

pytestmark = pytest.mark.hostile

EXAMPLES = int(os.environ.get("ROUTE_INPUT_EXAMPLES", "6"))
RANDOM = os.environ.get("HOSTILE_FUZZ_RANDOM", "") == "1"
SAME_ORIGIN = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}

# Routes deliberately left out of the fuzz: (method, path) -> why. Empty: every route is fuzzed.
EXCLUDED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class KnownBug:
    """A 5xx or unhandled error found here and not fixed yet: `value` in any of `params`."""

    method: str
    path: str
    params: tuple[str, ...]
    value: str
    backends: tuple[str, ...]
    reason: str
    # Send the route once without the value first, with the audit budget at 1 per minute: the
    # failing request's own audit event is then counted, not inserted (and cannot fail first).
    after_budget: bool = False
    # Fixed since: the row stays as that input's regression test, on every backend.
    fixed: str | None = None


# Each is left out of the sweep and the fuzz (only that input, on those backends) and checked by
# its own strict xfail test, which fails (XPASS) once the bug is fixed: then mark it `fixed`,
# and the same test checks the input passes.
KNOWN_BUGS: list[KnownBug] = [
    KnownBug(
        "GET",
        "/v1/audit/export",
        ("agency", "agreement", "operation", "kind", "reason"),
        "\x00",
        ("postgresql",),
        "issue 15: a NUL in a text filter of an export fails only in the streamed body on "
        "PostgreSQL (DataError after the 200 was sent: a cut-off export and an unhandled error) "
        "instead of a 422 before the response starts",
        after_budget=True,
        fixed="audit.router.event_filter refuses control characters (422 audit.bad_filter)",
    ),
]


def known_bug(endpoint: Endpoint, case: dict[str, Any], backend: str) -> KnownBug | None:
    sent = [*case["values"].items(), *case["query"], *case["form"]]
    for bug in KNOWN_BUGS:
        if (
            bug.fixed is None
            and (bug.method, bug.path) == endpoint.key
            and backend in bug.backends
            and any(name in bug.params and bug.value in value for name, value in sent)
        ):
            return bug
    return None


# Valid JSON bodies where the body model's own `examples` do not make one (or make one that
# must not be stored: a real push URL would be POSTed to by the push worker).
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/messages"): {"envelope": "eyJhbGciOiJFZERTQSJ9.e30.AA"},
    ("POST", "/v1/inbox/{mid}/ack"): {"ack": "eyJhbGciOiJFZERTQSJ9.e30.AA"},
    ("PUT", "/v1/admin/agencies/{agency_id}/push"): {
        "url": "https://push.invalid/broker",
        "enabled": False,
    },
    ("POST", "/v1/admin/principals"): {"name": "fuzz-agency", "role": "agency"},
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/designations"): {
        "agreement": "VN-HK-CMAA-2013",
        "valid_from": "2024-01-01",
    },
}


# --- the routes, read from the application -------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One method of one route, with everything a request to it can carry."""

    method: str
    path: str  # the full template, mounts included: /console/messages/{mid}
    path_params: tuple[str, ...] = ()
    query: tuple[str, ...] = ()  # names as sent (aliases)
    form: tuple[str, ...] = ()
    roles: frozenset[Role] | None = None  # the API role gate; None: no gate
    console: bool = False  # under the console mount: a cookie session, not a bearer token
    json_body: Any = None  # the body model or schema, when the route reads a JSON body

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)


def _flat(dependant: Any) -> Iterator[Any]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _flat(sub)


def _endpoint(method: str, path: str, route: Any, console: bool) -> Endpoint:
    from fastapi.params import Form

    from broker.deps import RoleGate

    path_params: list[str] = []
    query: list[str] = []
    form: list[str] = []
    body: Any = None
    gates = []
    for dep in _flat(route.dependant):
        path_params += [p.alias for p in dep.path_params]
        query += [p.alias for p in dep.query_params]
        for param in dep.body_params:
            if isinstance(param.field_info, Form):
                form.append(param.alias)
            else:
                body = param.field_info.annotation
        if isinstance(dep.call, RoleGate):
            gates.append(dep.call.roles)
    extra = (route.openapi_extra or {}).get("requestBody")
    if body is None and extra is not None:  # parsed in the route, documented by hand
        body = extra["content"]["application/json"]["schema"]
    return Endpoint(
        method=method,
        path=path,
        path_params=tuple(dict.fromkeys(path_params)),
        query=tuple(dict.fromkeys(query)),
        form=tuple(dict.fromkeys(form)),
        roles=gates[0] if gates else None,
        console=console,
        json_body=body,
    )


def endpoints(app: Any) -> list[Endpoint]:
    """Every (method, route) the application answers, the mounted applications' included."""
    from fastapi.routing import APIRoute, _iter_included_route_candidates
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    out: list[Endpoint] = []

    def walk(routes: Any, prefix: str, console: bool) -> None:
        for route in _iter_included_route_candidates(routes):
            if isinstance(route, APIRoute):
                out.extend(
                    _endpoint(method, prefix + route.path, route, console)
                    for method in sorted(route.methods or ())
                )
            elif isinstance(route, Route):  # plain Starlette: the OpenAPI document
                methods = sorted(route.methods or {"GET"})
                out.extend(Endpoint(m, prefix + route.path) for m in methods)
            elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
                out.append(Endpoint("GET", prefix + route.path + "/{path}", ("path",)))
            elif isinstance(route, Mount) and hasattr(route.app, "routes"):
                walk(route.app.routes, prefix + route.path, console or route.path == "/console")
            else:
                raise AssertionError(
                    f"a route of a kind this test does not know: {route!r}; "
                    "teach `endpoints` about it or list it in EXCLUDED with the reason"
                )

    walk(app.routes, "", False)
    return out


def _example(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A value for a JSON schema from its examples (required members only)."""
    if "$ref" in schema:
        return _example(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _example(props[k], defs) for k in schema.get("required", [])}
    return None


def body_for(endpoint: Endpoint) -> Any:
    """The JSON body to send with every fuzzed request of `endpoint` (None: no JSON body)."""
    if endpoint.json_body is None:
        return None
    if endpoint.key in BODIES:
        return BODIES[endpoint.key]
    model = endpoint.json_body
    if isinstance(model, dict):  # a schema written into the route's OpenAPI by hand
        return _example(model, model.get("$defs", {}))
    if get_origin(model) is dict or model is dict:
        return {}
    assert isinstance(model, type), model
    assert issubclass(model, BaseModel), model
    schema = model.model_json_schema()
    body = _example(schema, schema.get("$defs", {}))
    TypeAdapter(model).validate_python(body)  # else: add a valid body to BODIES
    return body


def url_for(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: quote(values[m.group(1)], safe=""), template)


# --- the world: a delivered alert, a checkpoint, a token per role --------------------------


class Faults(logging.Handler):
    """Errors the application logs while it answers: an unhandled exception is one even when
    the client never sees a 500 (a streamed response that already started, then broke)."""

    LOGGERS = ("broker.app", "broker.console")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def describe(self) -> list[str]:
        out = []
        for record in self.records:
            event = record.msg.get("event") if isinstance(record.msg, dict) else record.msg
            line = f"logged {record.name}: {event}"
            exc = record.exc_info[1] if record.exc_info else None
            while exc is not None:  # the chain of causes, each where it was raised in broker/
                frames = traceback.extract_tb(exc.__traceback__)
                ours = [f for f in frames if "/broker/" in f.filename] or frames
                where = f" at {ours[-1].filename.rsplit('/broker/', 1)[-1]}:{ours[-1].lineno}"
                first = str(exc).split("\n", 1)[0][:200]
                line += f"\n      {type(exc).__name__}: {first}{where if ours else ''}"
                exc = exc.__cause__ or exc.__context__
            out.append(line)
        return out


@dataclass
class Scene:
    exchange: Exchange
    path_values: dict[str, str]
    identities: dict[Role, list[dict[str, str]]]
    console_token: str
    form_values: dict[str, str] = field(default_factory=dict)  # the console's hidden fields
    backend: str = ""
    faults: Faults = field(default_factory=Faults)
    statuses: dict[int, int] = field(default_factory=dict)
    requests: int = 0
    known: int = 0

    def credentials(self, endpoint: Endpoint) -> list[dict[str, str]]:
        """The bearer headers of every identity whose role the route's gate admits."""
        assert endpoint.roles is not None
        return [h for role in sorted(endpoint.roles) for h in self.identities[role]]

    def tally(self) -> str:
        statuses = dict(sorted(self.statuses.items()))
        known = f", {self.known} known bug(s) hit" if self.known else ""
        self.statuses, self.requests, self.known, n = {}, 0, 0, self.requests
        return f"{n} requests, statuses {statuses}{known}"


def wait_for_checkpoint(client: Any, headers: dict[str, str]) -> None:
    from tests.audit.conftest import sequence_all

    deadline = time.monotonic() + 20
    while client.get("/v1/log/checkpoint", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "no checkpoint"
        sequence_all()


@pytest.fixture(scope="module")
def scene(armed: Exchange) -> Scene:
    with server_lock(exclusive=False):  # a module fixture: outside its tests' hold on the lock
        response, routing, _ = armed.send()
        assert response.status_code == 201, response.text
        relay()
        admin = make_token("admin")
        wait_for_checkpoint(armed.client, bearer(admin))
        auditor = make_token("auditor", audit_agencies=["VN-GDC", "HK-CED"])
        identities = {
            Role.admin: [bearer(admin)],
            Role.auditor: [bearer(auditor), bearer(make_token("auditor"))],
            Role.agency: [armed.agency_headers("HK-CED")],
            Role.focal_point: [armed.fp_headers(SENDER_FP)],
            Role.registrar: [bearer(make_token("registrar", agency_id="VN-GDC"))],
        }
        # The inbox is not empty: a fuzzed `wait` never holds a poll open.
        inbox = armed.client.get("/v1/inbox", headers=armed.agency_headers("HK-CED"))
        assert inbox.json()["items"], inbox.text
    kid = armed.signing[SENDER_FP].kid
    values = {
        **PATH_VALUES,
        "mid": routing["mid"],
        "kid": kid,
        "path": "console/favicon.svg",
        "name": "nobody",
    }
    # Never a real token id: a fuzzed revoke must not revoke this test's own tokens.
    values["token_id"] = str(uuid.uuid4())
    return Scene(armed, values, identities, auditor)


# --- the values ----------------------------------------------------------------------------

CHARS = st.characters(codec="utf-8")  # the whole range but surrogates (not UTF-8 encodable)
SPECIAL = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\x7f\x1b[2J",
    "²",
    "٣",
    "١٢٣",
    "１２",
    "Ⅻ",
    "𝟗",
    "৪2",
    "-1",
    "0",
    "1",
    "00000000000000000000001",
    "1e400",
    "NaN",
    "-inf",
    str(2**62),
    str(2**63),
    str(2**64 + 1),
    str(-(2**63) - 1),
    "9" * 400,
    "true",
    "json",
    "csv",
    "msg.rejected",
    "VN-GDC",
    "HK-CED",
    "VN-HK-CMAA-2013",
    "2026-12-07",
    "2026-12-07T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "../../../../etc/passwd",
    "%00%2F%ZZ",
    "\u202e\ufeff\u200b",
    "\U0010ffff",
]
TEXT = st.text(CHARS, max_size=40)
LONG = st.builds(
    lambda unit, n: unit * n, st.text(CHARS, min_size=1, max_size=3), st.integers(100, 1500)
)
# httpx refuses longer URLs (servers refuse far shorter request lines): query parameters past
# it are left off.
MAX_URL = 60_000
VALUE = st.one_of(st.sampled_from(SPECIAL), TEXT, LONG)
NAME = st.text(st.characters(codec="ascii", categories=["Ll"]), min_size=1, max_size=8)


@st.composite
def requests(draw: Any, endpoint: Endpoint, scene: Scene) -> dict[str, Any]:
    """One request to `endpoint`: a credential, path values, query and form fields."""
    who = None
    if endpoint.roles is not None:
        who = draw(st.sampled_from(scene.credentials(endpoint)))
    values = {
        p: draw(st.one_of(st.just(scene.path_values.get(p, "x")), VALUE))
        for p in endpoint.path_params
    }
    query = [(q, v) for q in endpoint.query for v in draw(st.lists(VALUE, max_size=2))]
    query += draw(st.lists(st.tuples(NAME, VALUE), max_size=1))  # a parameter nobody reads
    form = []
    for name in endpoint.form:
        real = scene.form_values.get(name)
        own = st.just([real]) if real is not None else st.nothing()
        form += [(name, v) for v in draw(st.one_of(own, st.lists(VALUE, max_size=2)))]
    return {"who": who, "values": values, "query": query, "form": form}


# Sent alone into each parameter in turn, the others left at their defaults (or real ids in
# the path), so that nothing else in the request is refused first.
SWEEP = ["", "\x00", "²", "٣", "-" + "9" * 19]  # the last: below the 64-bit integers


def sweep_cases(endpoint: Endpoint, scene: Scene) -> Iterator[dict[str, Any]]:
    """One request per parameter and SWEEP value (one without any for a route without any)."""
    creds = scene.credentials(endpoint) if endpoint.roles is not None else [None]
    real = {p: scene.path_values.get(p, "x") for p in endpoint.path_params}
    form = {f: scene.form_values[f] for f in endpoint.form if f in scene.form_values}
    cases: list[dict[str, Any]] = [{"values": real, "query": [], "form": list(form.items())}]
    for value in SWEEP:
        cases += [
            {"values": {**real, p: value}, "query": [], "form": list(form.items())}
            for p in endpoint.path_params
        ]
        cases += [
            {"values": real, "query": [(q, value)], "form": list(form.items())}
            for q in endpoint.query
        ]
        cases += [
            {"values": real, "query": [], "form": list({**form, f: value}.items())}
            for f in endpoint.form
        ]
    for i, case in enumerate(cases):
        yield {**case, "who": creds[i % len(creds)]}  # each admitted role in turn


def sign_in(client: Any, token: str) -> dict[str, str]:
    """Open a console session; returns the hidden fields its pages' forms carry (csrf)."""
    response = client.post(
        "/console/login", data={"token": token}, headers=SAME_ORIGIN, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    page = client.get("/console/log", headers=SAME_ORIGIN)
    assert page.status_code == 200, page.text
    return hidden_fields(page.text)


def hidden_fields(html: str) -> dict[str, str]:
    fields = {}
    for tag in re.findall(r"<input\b[^>]*>", html):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
        if attrs.get("type") == "hidden" and "name" in attrs:
            fields[attrs["name"]] = html_mod.unescape(attrs.get("value", ""))
    return fields


def send(scene: Scene, endpoint: Endpoint, case: dict[str, Any], body: Any) -> Any:
    client = scene.exchange.client
    url = url_for(endpoint.path, case["values"])
    query = list(case["query"])
    while query and len(url) + len(urlencode(query, encoding="utf-8")) >= MAX_URL:
        query.pop()
    if query:
        url += "?" + urlencode(query, encoding="utf-8")
    headers = dict(case["who"] or {})
    kwargs: dict[str, Any] = {}
    if endpoint.console:
        headers.update(SAME_ORIGIN)
    if endpoint.form:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        kwargs["content"] = urlencode(case["form"], encoding="utf-8").encode()
    elif body is not None:
        kwargs["json"] = body
    scene.faults.records.clear()
    response = client.request(
        endpoint.method, url, headers=headers, follow_redirects=False, **kwargs
    )
    scene.requests += 1
    scene.statuses[response.status_code] = scene.statuses.get(response.status_code, 0) + 1
    if endpoint.console and "set-cookie" in response.headers:
        # Signed out (logout, a refused session): sign in again, with the new session's fields.
        scene.form_values = sign_in(client, scene.console_token)
    faults = scene.faults.describe()
    if response.status_code >= 500 or faults:
        form = f" form={case['form']!r}" if case["form"] else ""
        failure = (
            f"{endpoint.method} {url[:600]}{form} -> {response.status_code} "
            f"(request id {response.headers.get('x-request-id')}): {response.text[:300]}"
            + "".join(f"\n    {f}" for f in faults)
        )
        if known_bug(endpoint, case, scene.backend) is None:
            raise AssertionError(failure)
        scene.known += 1
    return response


def fuzz(scene: Scene, endpoint: Endpoint) -> None:
    examples = EXAMPLES if endpoint.path_params or endpoint.query or endpoint.form else 3
    body = body_for(endpoint)

    @given(case=requests(endpoint, scene))
    @hsettings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: dict[str, Any]) -> None:
        send(scene, endpoint, case, body)

    run()


# --- the tests -----------------------------------------------------------------------------


def test_every_route_is_fuzzed(app: Any) -> None:
    """The enumeration sees every route the OpenAPI document lists, and the console's."""
    found = {e.key for e in endpoints(app)}
    documented = {
        (method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops
    }
    assert documented <= found, documented - found
    assert {("GET", "/console/"), ("POST", "/console/log/verify")} <= found
    assert not set(EXCLUDED) - found, "EXCLUDED names a route that no longer exists"
    for endpoint in endpoints(app):
        body_for(endpoint)  # every JSON body route has a valid body (else: a BODIES row)


@pytest.fixture
def fuzzing(backend: str, scene: Scene, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    # Hundreds of requests a minute from one client and principal: not what is tested here.
    monkeypatch.setattr(settings(), "rate_limit_enabled", False)
    scene.backend = backend
    scene.form_values = sign_in(scene.exchange.client, scene.console_token)
    loggers = [logging.getLogger(name) for name in Faults.LOGGERS]
    for logger in loggers:
        logger.addHandler(scene.faults)
    try:
        yield scene
    finally:
        for logger in loggers:
            logger.removeHandler(scene.faults)
        scene.exchange.client.cookies.clear()


def _fuzzed(app: Any) -> list[Endpoint]:
    return [e for e in endpoints(app) if e.key not in EXCLUDED]


def test_no_5xx_for_hostile_values(backend: str, app: Any, fuzzing: Scene) -> None:
    """Each SWEEP value alone in each parameter of each route."""
    failures = []
    routes = _fuzzed(app)
    for endpoint in routes:
        body = body_for(endpoint)
        for case in sweep_cases(endpoint, fuzzing):
            try:
                send(fuzzing, endpoint, case, body)
            except AssertionError as exc:
                failures.append(str(exc))
    print(f"\nroute inputs, sweep, {backend}: {len(routes)} routes, {fuzzing.tally()}")
    assert not failures, f"{len(failures)} request(s) answered 5xx:\n" + "\n".join(failures)


@pytest.mark.postgres  # the stricter backend (NUL, integer ranges); the sweep runs on both
def test_no_5xx_for_any_input(backend: str, app: Any, fuzzing: Scene) -> None:
    """Hypothesis: arbitrary values in any mix of parameters of each route."""
    failures = []
    routes = _fuzzed(app)
    for endpoint in routes:
        try:
            fuzz(fuzzing, endpoint)
        except Exception as exc:  # every route is tried; all failures are reported
            failures.append(str(exc).split("\n", 1)[0][:1200])
    print(f"\nroute inputs, hypothesis, {backend}: {len(routes)} routes, {fuzzing.tally()}")
    assert not failures, f"{len(failures)} route(s) answered 5xx:\n" + "\n".join(failures)
    assert len(routes) >= 50


@pytest.mark.parametrize(
    ("bug", "param"),
    [(bug, param) for bug in KNOWN_BUGS for param in bug.params],
    ids=lambda v: v if isinstance(v, str) else f"{v.method} {v.path}",
)
def test_known_bug(
    bug: KnownBug,
    param: str,
    backend: str,
    app: Any,
    fuzzing: Scene,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each known bug's input alone: an expected failure where it applies, a pass elsewhere."""
    if backend in bug.backends and bug.fixed is None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=bug.reason))
    fuzzing.backend = ""  # no known bug excuses these requests
    endpoint = next(e for e in endpoints(app) if e.key == (bug.method, bug.path))
    who = None
    if endpoint.roles is not None:  # the last identity: an auditor's overseeing every agency
        who = fuzzing.credentials(endpoint)[-1]
    real = {p: fuzzing.path_values.get(p, "x") for p in endpoint.path_params}
    plain: dict[str, Any] = {"who": who, "values": real, "query": [], "form": []}
    case = {
        **plain,
        "values": {**real, param: bug.value} if param in real else real,
        "query": [(param, bug.value)] if param in endpoint.query else [],
        "form": [(param, bug.value)] if param in endpoint.form else [],
    }
    if bug.after_budget:
        monkeypatch.setattr(settings(), "audit_budget_per_minute", 1)
    body = body_for(endpoint)
    for _ in range(3):  # a minute that ends between the two requests opens a new budget
        if bug.after_budget:
            send(fuzzing, endpoint, plain, body)
        send(fuzzing, endpoint, case, body)
