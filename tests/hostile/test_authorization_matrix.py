"""Who may call what: every route x every role x own/foreign, against a table written by hand.

TABLE below says, for each route (method and path template, mounts included), which roles it
admits and what an admitted caller gets for its own and for another party's resource. The
test reads the routes from the application (`endpoints`, the same enumeration as the input
fuzz: `app.routes`, the mounted console and static files, routes outside the OpenAPI document
included), and a route without a row fails ("new route without an authorization row"), as
does a row whose route is gone.

Each route is called as: a focal point, an agency, a registrar, an auditor, an admin, without
a token and with a made-up token. A route with a resource (a path parameter, or the agency a
query names) is called by each bound role twice: bound to the resource's party ("own": the
sending focal point and agency VN-GDC of an alert VN-GDC -> HK-CED, VN-GDC's registrar, an
auditor overseeing VN-GDC and HK-CED) and bound elsewhere ("foreign": KR-KCS's focal point,
agency and auditor, HK-CED's registrar). tests/hostile/test_registrar_bola.py calls every
registry route on real VN-GDC objects as HK-CED's registrar.

What each cell must answer:

- API route, no token or a made-up one: 401 `auth.unauthenticated`;
  a role the route does not admit: 403 `auth.forbidden` (the role gate, before anything else);
  an admitted role: the row's `ok` status for its own resource, else anything but 401 and 403
  (a dummy body may still be 404 or 422), and the row's `foreign` status for another party's.
- Console route (cookie session, auditors only): any caller without an auditor's session, a
  token in the cookie instead of a session included, is sent to the sign-in page (303 to
  /console/login); an auditor gets `ok` or `foreign` as above.
- Public routes (probes, the OpenAPI document, static files, the console's sign-in and
  sign-out): the same answer for everyone, credentials or not (sign-out: see its row).
- /metrics: the scraper's own token (BROKER_METRICS_TOKEN) only; 401 for every API token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.config import settings
from broker.console.router import COOKIE
from tests.conftest import bearer, server_lock
from tests.hostile.conftest import SENDER_FP, make_token
from tests.hostile.test_route_inputs import (
    SAME_ORIGIN,
    endpoints,
    hidden_fields,
    url_for,
    wait_for_checkpoint,
)
from tests.messages.conftest import Exchange, relay

pytestmark = pytest.mark.hostile

FP, AGENCY, AUDITOR, ADMIN = "focal_point", "agency", "auditor", "admin"
REGISTRAR = "registrar"
NO_TOKEN, BAD_TOKEN = "no token", "bad token"
ROLES = (FP, AGENCY, REGISTRAR, AUDITOR, ADMIN, NO_TOKEN, BAD_TOKEN)
BOUND = (FP, AGENCY, REGISTRAR, AUDITOR)  # roles bound to a party: called as own and as foreign

ANY = frozenset({FP, AGENCY, REGISTRAR, AUDITOR, ADMIN})
PARTY = frozenset({FP, AGENCY})
ONLY_ADMIN = frozenset({ADMIN})
REGISTRY = frozenset({ADMIN, REGISTRAR})  # the administrator, or the agency's own registrar
ONLY_AUDITOR = frozenset({AUDITOR})

API, CONSOLE, PUBLIC, SIGN_IN, SCRAPE = "api", "console", "public", "sign-in", "scrape"
SCRAPER = "the metrics scraper"  # not a role: the one token BROKER_METRICS_TOKEN names
SCRAPER_TOKEN = "scraper-" + "s" * 32

# The caller's binding, own (the alert's and the agreement's party) and foreign (KR-KCS).
OWN: dict[str, dict[str, Any]] = {
    FP: {"focal_point_id": SENDER_FP},
    AGENCY: {"agency_id": "VN-GDC"},
    REGISTRAR: {"agency_id": "VN-GDC"},
    AUDITOR: {"audit_agencies": ["VN-GDC", "HK-CED"]},
    ADMIN: {},
}
FOREIGN: dict[str, dict[str, Any]] = {
    FP: {"focal_point_id": "KR-KCS/fp-01"},
    AGENCY: {"agency_id": "KR-KCS"},
    REGISTRAR: {"agency_id": "HK-CED"},
    AUDITOR: {"audit_agencies": ["KR-KCS"]},
}
ACK = object()  # body marker: the caller's agency's signed acknowledgement of the alert


@dataclass(frozen=True)
class Extra:
    """One more cell: a caller with a binding of its own, and exactly what it must get."""

    label: str
    role: str
    binding: dict[str, Any]
    status: int
    form: dict[str, str] | None = None


@dataclass(frozen=True)
class Row:
    surface: str  # API (bearer token), CONSOLE (session cookie), PUBLIC, SIGN_IN or SCRAPE
    roles: frozenset[str] = frozenset()  # admitted (API, CONSOLE)
    ok: int | None = None  # admitted, own resource: this status (None: not 401/403)
    foreign: int | None = None  # admitted, another party's resource (None: as own)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    form: dict[str, str] | None = None  # console forms; the session's hidden fields are added
    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # bindings other than OWN
    scoped: bool = False  # own/foreign by `query` (a path parameter makes a route scoped anyway)
    by_role: dict[str, int] = field(default_factory=dict)  # PUBLIC: a role's own answer
    extra: tuple[Extra, ...] = ()


def api(roles: frozenset[str], ok: int | None = None, **kw: Any) -> Row:
    return Row(API, roles, ok, **kw)


def console(ok: int | None = 200, **kw: Any) -> Row:
    return Row(CONSOLE, ONLY_AUDITOR, ok, **kw)


def public(ok: int | None = 200, **kw: Any) -> Row:
    return Row(PUBLIC, ok=ok, **kw)


AUDIT_QUERY = {"agency": "VN-GDC"}
REGISTRY_QUERY = {"agency": "VN-GDC"}  # a registry listing of VN-GDC's
VERIFY_FORM = {"full": "false", "index": ""}
# No filter (the log page's hidden `since` is its verify form's): a bound auditor's file holds
# its own agencies only.
EXPORT_FORM = {"format": "json", "since": ""}
# Operation results: KR-KCS coordinates TWIN-GUARDIAN-II, so its principals are "own" here and
# "foreign" alike; the other member (VN-GDC) and an auditor of no member are refused.
NO_MEMBER_AUDITOR = {"audit_agencies": ["HK-CED"]}
RESULTS = Row(
    API,
    frozenset({FP, AGENCY, AUDITOR}),
    200,
    own={FP: {"focal_point_id": "KR-KCS/fp-01"}, AGENCY: {"agency_id": "KR-KCS"}},
    extra=(
        Extra("a member that does not coordinate", AGENCY, {"agency_id": "VN-GDC"}, 403),
        Extra("its focal point", FP, {"focal_point_id": SENDER_FP}, 403),
        Extra("an auditor of no member", AUDITOR, NO_MEMBER_AUDITOR, 403),
    ),
)
NO_MEMBER_PAGE = Extra("an auditor of no member", AUDITOR, NO_MEMBER_AUDITOR, 404)
# The registrar of an agency that is no party to VN-HK-CMAA-2013.
NOT_PARTY = Extra("a registrar of no party", REGISTRAR, {"agency_id": "KR-KCS"}, 403)

TABLE: dict[tuple[str, str], Row] = {
    # messages: focal points submit; the sending agency (its focal points and its agency
    # principal) may follow an alert, nobody else (404 alike for unknown and not yours).
    ("POST", "/v1/messages"): api(frozenset({FP}), body={}),
    ("POST", "/v1/messages:check"): api(frozenset({FP}), body={}),
    # the sender agency's copies overdue for acknowledgement: its own only, by construction
    ("GET", "/v1/messages:overdue"): api(PARTY, 200),
    # recall: the sending agency's focal points (the signed statement names which); answers
    # to a recall notice: the recipient agency's principal
    ("POST", "/v1/messages/{mid}/recall"): api(frozenset({FP}), body={}),
    ("POST", "/v1/inbox/{mid}/compliance"): api(frozenset({AGENCY}), body={}),
    ("GET", "/v1/messages/{mid}"): api(
        PARTY,
        200,
        foreign=404,
        extra=(Extra("the recipient agency", AGENCY, {"agency_id": "HK-CED"}, 404),),
    ),
    # inbox: agencies only; an acknowledgement of an alert not in the caller's inbox is 404.
    ("GET", "/v1/inbox"): api(frozenset({AGENCY}), 200),
    ("POST", "/v1/inbox/{mid}/ack"): api(
        frozenset({AGENCY}),
        200,
        foreign=404,
        body=ACK,
        own={AGENCY: {"agency_id": "HK-CED"}},
        extra=(Extra("the sending agency", AGENCY, {"agency_id": "VN-GDC"}, 404),),
    ),
    # probes: no credentials; metrics: the scraper's token only, no API token (who exchanges
    # with whom shows in the per-recipient gauges)
    ("GET", "/health/live"): public(),
    ("GET", "/health/ready"): public(),
    ("GET", "/metrics"): Row(SCRAPE, extra=(Extra("the scraper's token", SCRAPER, {}, 200),)),
    ("GET", "/openapi.json"): public(),
    ("HEAD", "/openapi.json"): public(),
    ("GET", "/docs"): public(),
    ("GET", "/static/{path}"): public(),
    # access
    ("GET", "/v1/me"): api(ANY, 200),
    # registry: the administrator, or an agency's own registrar (another agency's object: 403
    # `auth.foreign_agency`, before the body is read). Names, key ids and token ids here are
    # made up (404 for both): test_registrar_bola.py uses real ones.
    ("POST", "/v1/admin/principals"): api(REGISTRY, body={}),
    ("GET", "/v1/admin/principals"): api(
        REGISTRY, 200, foreign=403, query=REGISTRY_QUERY, scoped=True
    ),
    ("POST", "/v1/admin/principals/{name}/tokens"): api(REGISTRY, body={}),
    ("POST", "/v1/admin/tokens/{token_id}/revoke"): api(REGISTRY),
    ("POST", "/v1/admin/principals/{name}/disable"): api(REGISTRY, body={}),
    ("POST", "/v1/admin/principals/{name}/enable"): api(REGISTRY, body={}),
    # the directory for every authenticated caller
    ("GET", "/v1/directory/agencies"): api(ANY, 200),
    ("GET", "/v1/directory"): api(ANY, 200),
    ("GET", "/v1/directory/jwks"): api(ANY, 200),
    ("GET", "/v1/directory/broker"): api(ANY, 200),
    ("POST", "/v1/admin/agencies"): api(ONLY_ADMIN, body={}),
    ("GET", "/v1/admin/agencies"): api(ONLY_ADMIN, 200),
    ("GET", "/v1/admin/agencies/{agency_id}"): api(REGISTRY, 200, foreign=403),
    ("POST", "/v1/admin/agencies/{agency_id}/focal-points"): api(REGISTRY, body={}, foreign=403),
    ("GET", "/v1/admin/focal-points"): api(
        REGISTRY, 200, foreign=403, query=REGISTRY_QUERY, scoped=True
    ),
    # Empty bodies (422): a real suspension would refuse the matrix's own callers.
    ("POST", "/v1/admin/agencies/{agency_id}/suspend"): api(ONLY_ADMIN, body={}),
    ("POST", "/v1/admin/agencies/{agency_id}/reactivate"): api(ONLY_ADMIN, body={}),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/suspend"): api(
        REGISTRY, body={}, foreign=403
    ),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/reactivate"): api(
        REGISTRY, body={}, foreign=403
    ),
    ("PUT", "/v1/admin/agencies/{agency_id}/push"): api(REGISTRY, body={}, foreign=403),
    ("GET", "/v1/admin/agencies/{agency_id}/push"): api(REGISTRY, foreign=403),
    ("POST", "/v1/admin/keys"): api(REGISTRY, body={}),
    ("GET", "/v1/admin/keys"): api(REGISTRY, 200, foreign=403, query=REGISTRY_QUERY, scoped=True),
    ("GET", "/v1/admin/keys/{kid}"): api(REGISTRY),
    ("POST", "/v1/admin/keys/{kid}/rotate"): api(REGISTRY, body={}),
    ("POST", "/v1/admin/keys/{kid}/retire"): api(REGISTRY),
    ("POST", "/v1/admin/keys/{kid}/revoke"): api(REGISTRY, body={}),
    # agreements: parties read their own view; admins create and a party's registrar reads
    # the text
    ("GET", "/v1/agreements"): api(PARTY, 200),
    ("POST", "/v1/admin/agreements"): api(ONLY_ADMIN, body={}),
    ("GET", "/v1/admin/agreements"): api(ONLY_ADMIN, 200),
    ("GET", "/v1/admin/agreements/{agreement_id}/versions"): api(REGISTRY, 200, extra=(NOT_PARTY,)),
    # changes approved by the parties (VN-HK-CMAA-2013: VN-GDC and HK-CED, so HK-CED's registrar
    # is a party too; KR-KCS's is not): proposals by the administrator or a party's registrar,
    # approvals and restrictions by a party's registrar only (every route on real objects of
    # a foreign registrar: test_registrar_bola.py)
    ("POST", "/v1/agreements/{agreement_id}/proposals"): api(REGISTRY, body={}),
    ("GET", "/v1/agreements/{agreement_id}/proposals"): api(REGISTRY, 200, extra=(NOT_PARTY,)),
    ("POST", "/v1/agreements/{agreement_id}/proposals/{proposal_id}/approvals"): api(
        frozenset({REGISTRAR}), body={}
    ),
    ("POST", "/v1/agreements/{agreement_id}/restrictions"): api(frozenset({REGISTRAR}), body={}),
    ("POST", "/v1/admin/operations"): api(ONLY_ADMIN, body={}),
    ("GET", "/v1/admin/operations"): api(ONLY_ADMIN, 200),
    ("PUT", "/v1/admin/operations/{operation_id}"): api(ONLY_ADMIN, body={}),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/designations"): api(
        REGISTRY, body={}, foreign=403
    ),
    ("GET", "/v1/admin/focal-points/{agency_id}/{slug}/designations"): api(
        REGISTRY, 200, foreign=403
    ),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/designations/{agreement_id}/end"): api(
        REGISTRY, body={}, foreign=403
    ),
    ("POST", "/v1/admin/world"): api(ONLY_ADMIN, body={}),
    # legal holds: auditors (on messages naming an agency they oversee) and administrators
    ("POST", "/v1/holds"): api(frozenset({AUDITOR, ADMIN}), body={}),
    ("GET", "/v1/holds"): api(frozenset({AUDITOR, ADMIN}), 200),
    ("POST", "/v1/holds/{hold_id}/lift"): api(frozenset({AUDITOR, ADMIN}), body={}),
    # audit: auditors only; naming an agency the auditor does not oversee is 403
    ("GET", "/v1/audit/events"): api(
        ONLY_AUDITOR, 200, foreign=403, query=AUDIT_QUERY, scoped=True
    ),
    ("GET", "/v1/audit/summary"): api(
        ONLY_AUDITOR, 200, foreign=403, query=AUDIT_QUERY, scoped=True
    ),
    ("GET", "/v1/audit/export"): api(
        ONLY_AUDITOR, 200, foreign=403, query=AUDIT_QUERY, scoped=True
    ),
    # the transparency log: public to every authenticated caller; leaves (which name
    # agencies) to auditors and agencies, each seeing only what it oversees or is
    ("GET", "/v1/log/checkpoint"): api(ANY, 200),
    ("GET", "/v1/log/key"): api(ANY, 200),
    ("GET", "/v1/log/proof/inclusion"): api(ANY, 200, query={"index": "0"}),
    ("GET", "/v1/log/proof/consistency"): api(ANY, 200, query={"from": "1"}),
    ("GET", "/v1/log/leaves"): api(frozenset({AUDITOR, AGENCY}), 200),
    ("GET", "/v1/log/nodes"): api(ANY, 200),
    # operation results (TWIN-GUARDIAN-II: members KR-KCS and VN-GDC, coordinated by KR-KCS):
    # the coordinating agency's principals and auditors of a member; other members 403
    ("GET", "/v1/operations/{operation_id}/results"): RESULTS,
    ("GET", "/v1/operations/{operation_id}/results.csv"): RESULTS,
    ("GET", "/v1/operations/{operation_id}/results/feedback"): RESULTS,
    # witnesses: the list for everyone; cosignatures from agencies (only lines of their own
    # registered witnesses count); admins register and retire witnesses
    ("GET", "/v1/log/witnesses"): api(ANY, 200),
    ("POST", "/v1/log/cosignatures"): api(frozenset({AGENCY}), body={}),
    ("POST", "/v1/admin/witnesses"): api(ONLY_ADMIN, body={}),
    ("POST", "/v1/admin/witnesses/retire"): api(ONLY_ADMIN, 404, body={"name": "nobody"}),
    # the console: auditors' sessions only; what they do not oversee is 403 (a filter naming
    # it) or 404 (a page of it, alike for unknown)
    ("GET", "/console/login"): public(None),  # 303 to the log for a signed-in auditor
    ("POST", "/console/login"): Row(SIGN_IN),
    # Sign-out needs the session's form token once there is a cookie: a cookie that is no
    # session (a token, a made-up value) without one is refused like a forged form.
    ("POST", "/console/logout"): public(
        303,
        form={},
        by_role={FP: 403, AGENCY: 403, REGISTRAR: 403, ADMIN: 403, BAD_TOKEN: 403},
        extra=(Extra("an auditor's session without its form token", AUDITOR, {}, 403, {}),),
    ),
    ("GET", "/console/"): console(foreign=403, query=AUDIT_QUERY, scoped=True),
    ("GET", "/console/messages/{mid}"): console(foreign=404),
    ("GET", "/console/rejections"): console(foreign=403, query=AUDIT_QUERY, scoped=True),
    ("GET", "/console/agreements"): console(),
    ("GET", "/console/agreements/{agreement_id}"): console(foreign=404),
    ("GET", "/console/operations"): console(),
    ("GET", "/console/operations/{operation_id}"): console(extra=(NO_MEMBER_PAGE,)),
    ("GET", "/console/operations/{operation_id}/results.csv"): console(extra=(NO_MEMBER_PAGE,)),
    ("GET", "/console/operations/{operation_id}/feedback"): console(extra=(NO_MEMBER_PAGE,)),
    ("GET", "/console/log"): console(),
    ("GET", "/console/log/full"): console(),
    ("POST", "/console/export"): console(
        form=EXPORT_FORM,
        extra=(Extra("without the form token", AUDITOR, OWN[AUDITOR], 403, EXPORT_FORM),),
    ),
    ("POST", "/console/log/verify"): console(
        form=VERIFY_FORM,
        extra=(
            Extra("without the form token", AUDITOR, OWN[AUDITOR], 403, VERIFY_FORM),
            Extra(
                "with another session's form token",
                AUDITOR,
                OWN[AUDITOR],
                403,
                {**VERIFY_FORM, "csrf": "x" * 43},
            ),
        ),
    ),
}
# What POST /console/login answers for each caller's token in the form.
SIGN_IN_STATUS = {
    AUDITOR: 303,
    FP: 403,
    AGENCY: 403,
    REGISTRAR: 403,
    ADMIN: 403,
    NO_TOKEN: 401,
    BAD_TOKEN: 401,
}


# --- the world -------------------------------------------------------------------------------


@dataclass
class World:
    exchange: Exchange
    mid: str
    envelope: str
    path_values: dict[str, str]
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    sessions: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def token(self, role: str, binding: dict[str, Any]) -> str | None:
        if role == NO_TOKEN:
            return None
        if role == BAD_TOKEN:
            return "brk_" + secrets.token_urlsafe(32)
        if role == SCRAPER:
            return SCRAPER_TOKEN
        key = (role, repr(sorted(binding.items())))
        if key not in self.tokens:
            self.tokens[key] = make_token(role, **binding)
        return self.tokens[key]

    def console_session(self, token: str) -> tuple[str, dict[str, str]]:
        """An auditor's session cookie and its pages' hidden fields (a session per token)."""
        if token not in self.sessions:
            client = self.exchange.client
            client.cookies.clear()
            signed = client.post(
                "/console/login",
                data={"token": token},
                headers=SAME_ORIGIN,
                follow_redirects=False,
            )
            assert signed.status_code == 303, signed.text
            cookie = signed.cookies[COOKIE]
            page = client.get("/console/log", headers={**SAME_ORIGIN, "Cookie": _cookie(cookie)})
            assert page.status_code == 200, page.text
            client.cookies.clear()
            self.sessions[token] = (cookie, hidden_fields(page.text))
        return self.sessions[token]


def _cookie(value: str) -> str:
    return f"{COOKIE}={value}"


@pytest.fixture(scope="module")
def world(armed: Exchange) -> World:
    with server_lock(exclusive=False):  # a module fixture: outside its tests' hold on the lock
        response, routing, envelope = armed.send()
        assert response.status_code == 201, response.text
        relay()
        wait_for_checkpoint(armed.client, bearer(make_token("admin")))
    values = {
        "mid": routing["mid"],
        "agency_id": "VN-GDC",
        "slug": "fp-hcm-01",
        "agreement_id": "VN-HK-CMAA-2013",
        "operation_id": "TWIN-GUARDIAN-II",
        "name": "nobody",
        "kid": "A" * 43,  # no real key: an admitted admin must not retire or revoke one
        "token_id": "01a209e8-cf03-74d1-ac62-45eda8e12c83",
        "hold_id": "01a209e8-cf03-74d1-ac62-45eda8e12c84",  # no such hold: a lift is 404
        "proposal_id": "01a209e8-cf03-74d1-ac62-45eda8e12c86",  # no such proposal: 404
        "path": "console/favicon.svg",
    }
    return World(armed, routing["mid"], envelope, values)


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Made-up tokens by the hundred from one address: the failed-authentication limit would
    # answer 429 before the role gate is reached.
    monkeypatch.setattr(settings(), "rate_limit_enabled", False)
    monkeypatch.setattr(settings(), "metrics_token", SCRAPER_TOKEN)


# --- the cells -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    label: str
    role: str
    binding: dict[str, Any]
    expect: int | None  # None: anything but 401 and 403
    form: dict[str, str] | None = None
    code: str | None = None  # the problem code a refusal must carry
    page_fields: bool = True  # an auditor's form carries its session's hidden fields (csrf)


def cells(row: Row, path: str) -> Iterator[Cell]:
    scoped = row.scoped or "{" in path
    for role in ROLES:
        own = row.own.get(role, OWN.get(role, {}))
        variants = [("own", own)]
        if scoped and role in BOUND:
            variants.append(("foreign", FOREIGN[role]))
        for which, binding in variants:
            label = f"{role} ({which})" if len(variants) > 1 else role
            yield expected(row, role, which, binding, label)
    for extra in row.extra:
        yield Cell(
            extra.label, extra.role, extra.binding, extra.status, extra.form, page_fields=False
        )


def expected(row: Row, role: str, which: str, binding: dict[str, Any], label: str) -> Cell:
    if row.surface == PUBLIC:
        return Cell(label, role, binding, row.by_role.get(role, row.ok), row.form)
    if row.surface == SIGN_IN:
        return Cell(label, role, binding, SIGN_IN_STATUS[role])
    if row.surface == SCRAPE:  # an API token is not the scraper's
        return Cell(label, role, binding, 401, code="auth.unauthenticated")
    if row.surface == CONSOLE and role not in row.roles:
        return Cell(label, role, binding, 303, row.form)  # to the sign-in page
    if role in (NO_TOKEN, BAD_TOKEN):
        return Cell(label, role, binding, 401, code="auth.unauthenticated")
    if role not in row.roles:
        return Cell(label, role, binding, 403, code="auth.forbidden")
    if which == "foreign" and row.foreign is not None:
        # A registrar is refused another agency's object by its binding, not by its role.
        code = "auth.foreign_agency" if role == REGISTRAR and row.foreign == 403 else None
        return Cell(label, role, binding, row.foreign, row.form, code=code)
    return Cell(label, role, binding, row.ok, row.form)


def ack_body(world: World, caller: dict[str, Any]) -> dict[str, str]:
    """The alert's acknowledgement, signed by the caller's agency (HK-CED for other roles)."""
    from broker.crypto import envelope as env
    from broker.crypto.keys import sha256_b64u

    agency = caller.get("agency_id") or "HK-CED"
    payload = {
        "v": 1,
        "mid": world.mid,
        "envelope_sha256": sha256_b64u(world.envelope.encode()),
        "status": "received",
        "at": int(time.time() * 1000),
    }
    return {"ack": env.sign_compact(payload, world.exchange.agency_signing[agency], env.TYP_ACK)}


def call(world: World, method: str, path: str, row: Row, cell: Cell) -> Any:
    client = world.exchange.client
    client.cookies.clear()
    url = url_for(path, world.path_values)
    token = world.token(cell.role, cell.binding)
    headers: dict[str, str] = {}
    kwargs: dict[str, Any] = {"params": row.query}
    form = dict(cell.form) if cell.form is not None else None
    if path.startswith("/console"):
        headers.update(SAME_ORIGIN)
        if row.surface == SIGN_IN:
            form = {"token": token or ""}
        elif cell.role == AUDITOR and token is not None:
            cookie, hidden = world.console_session(token)
            headers["Cookie"] = _cookie(cookie)
            if form is not None and cell.page_fields:
                form = {**hidden, **form}
            if method == "POST" and path == "/console/logout":
                del world.sessions[token]  # this session ends here
        elif token is not None:
            headers["Cookie"] = _cookie(token)  # a token is not a session
    elif token is not None:
        headers.update(bearer(token))
    if form is not None:
        kwargs["data"] = form
    elif row.body is ACK:
        kwargs["json"] = ack_body(world, cell.binding)
    elif row.body is not None:
        kwargs["json"] = row.body
    return client.request(method, url, headers=headers, follow_redirects=False, **kwargs)


def check(response: Any, cell: Cell, console: bool) -> str | None:
    """Why the answer is not the cell's, or None."""
    status = response.status_code
    if cell.expect is None:
        if status in (401, 403):
            return f"{status}, expected to be admitted"
        return None
    if status != cell.expect:
        return f"{status}, expected {cell.expect}"
    if console and status == 303 and cell.expect == 303:
        location = response.headers.get("location", "")
        if not location.startswith("/console/"):
            return f"303 to {location!r}"
    if cell.code is not None and response.json().get("code") != cell.code:
        return f"code {response.json().get('code')!r}, expected {cell.code!r}"
    return None


# --- the tests -------------------------------------------------------------------------------


def test_every_route_has_a_row(app: Any) -> None:
    routes = {e.key for e in endpoints(app)}
    missing = sorted(routes - set(TABLE))
    assert not missing, f"new route without an authorization row: {missing}"
    stale = sorted(set(TABLE) - routes)
    assert not stale, f"authorization rows for routes that no longer exist: {stale}"


def test_api_rows_agree_with_the_role_gates(app: Any) -> None:
    """The table's roles are the roles each route's gate declares (the gate is the source)."""
    from broker.auth.service import Role

    for endpoint in endpoints(app):
        row = TABLE.get(endpoint.key)
        if row is None or row.surface != API:
            continue
        declared = frozenset(r.value for r in endpoint.roles or ())
        assert declared == row.roles, (endpoint.key, sorted(declared), sorted(row.roles))
        assert all(Role(r) for r in declared)
    gated = {e.key for e in endpoints(app) if e.roles is not None}
    ungated_api = {k for k, r in TABLE.items() if r.surface == API} - gated
    assert not ungated_api, f"API rows for routes without a role gate: {sorted(ungated_api)}"


@pytest.mark.parametrize(("method", "path"), list(TABLE), ids=lambda v: v)
def test_authorization(method: str, path: str, backend: str, world: World) -> None:
    row = TABLE[(method, path)]
    wrong = []
    for cell in cells(row, path):
        response = call(world, method, path, row, cell)
        why = check(response, cell, path.startswith("/console"))
        if why is not None:
            wrong.append(f"{cell.label}: {why}: {response.text[:200]}")
    assert not wrong, f"{method} {path}\n" + "\n".join(wrong)
