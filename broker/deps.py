"""Request dependencies: the session, and the role gate every route declares (`admit`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, ratelimit
from broker.auth import service as auth
from broker.auth.service import Caller, Role
from broker.errors import BrokerError, Forbidden

M = TypeVar("M", bound=BaseModel)

# One Depends object, so that the gate and the route share the request's one session. Its
# exit (the commit) runs when the route returns, before the response is sent.
SessionDep = Annotated[AsyncSession, Depends(db.get_session, scope="function")]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def authenticate(request: Request, session: AsyncSession, token: str | None) -> Caller:
    """The token's caller, with the limit on failed authentication per client around it."""
    address, key = ratelimit.client_address(request), ratelimit.token_key(token)
    await ratelimit.auth_allowed(address, key)
    try:
        caller = await auth.authenticate(session, token)
    except BrokerError as exc:
        await ratelimit.auth_failed(address, exc)
        raise
    await ratelimit.auth_succeeded(key)
    return caller


async def admit(request: Request, session: AsyncSession, roles: Collection[Role]) -> Caller:
    """Authenticate the bearer token and admit only `roles`, with the rate limits around it.

    Refusals come in this order for every route: 429 for a client that keeps failing
    authentication, 401, 429 for a spent budget, 403 for a role not admitted; a route parses
    its body only after this (422).
    """
    caller = await authenticate(request, session, _bearer(request))
    request.state.principal = caller.name
    await ratelimit.check(request, caller)
    if caller.role not in roles:
        raise Forbidden(f"role {caller.role.value} may not call this route")
    return caller


# How a caller authenticates, in the OpenAPI document: FastAPI lists a dependency that is a
# `SecurityBase` under the operation's `security`, so every gated route declares it and the
# public ones (health) do not. The gate reads the header itself (`_bearer`): no extra work.
BEARER = HTTPBearerModel(
    bearerFormat="brk_...",
    description="A broker token `brk_...`, issued by the operator for one principal (one role).",
)


class RoleGate(SecurityBase):
    """Deny by default: the dependency that admits only the listed roles (`admit`)."""

    model = BEARER
    scheme_name = "bearer"

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    async def __call__(self, request: Request, session: SessionDep) -> Caller:
        return await admit(request, session, self.roles)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [name for name, _ in pairs]
        raise _DuplicateMember(next(n for n in names if names.count(n) > 1))
    return obj


class _DuplicateMember(ValueError):
    pass


def strict_json(body: bytes) -> Any:
    """A request body's JSON, refusing duplicate member names (json.JSONDecodeError).

    Python's `json` keeps the last of two equal names, where a gateway or a partner's parser
    may keep the first: the broker would then act on a value the others never saw (issue 15.6).
    """
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text, object_pairs_hook=_unique_members)
    except _DuplicateMember as exc:
        raise json.JSONDecodeError(f"duplicate member name {exc.args[0]!r}", text, 0) from None


class StrictJSONRequest(Request):
    """A request whose `json()` is `strict_json`: what FastAPI parses declared bodies with."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Every API route: bodies parsed by `strict_json` (FastAPI's documented custom route).

    FastAPI turns the JSONDecodeError into its 422 `json_invalid` validation error, as for
    any malformed body.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


def json_body(model: type[M], request: Request, body: bytes) -> M:
    """Validate a JSON request body as FastAPI does for a declared body parameter."""
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    media = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": None,
                }
            ]
        )
    try:
        data = strict_json(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


R = Role
AdminCaller = Annotated[Caller, Depends(RoleGate(R.admin))]
AuditorCaller = Annotated[Caller, Depends(RoleGate(R.auditor))]
FocalPointCaller = Annotated[Caller, Depends(RoleGate(R.focal_point))]
AgencyCaller = Annotated[Caller, Depends(RoleGate(R.agency))]
PartyCaller = Annotated[Caller, Depends(RoleGate(R.focal_point, R.agency))]
AnyCaller = Annotated[
    Caller, Depends(RoleGate(R.focal_point, R.agency, R.auditor, R.admin, R.registrar))
]
# The registry routes an agency's registrar shares with the operator's administrator; the
# service checks the object is the registrar's own agency's (`auth.confinement`).
RegistryCaller = Annotated[Caller, Depends(RoleGate(R.admin, R.registrar))]
# What only an agency's registrar does for its agency: approve or restrict an agreement.
RegistrarCaller = Annotated[Caller, Depends(RoleGate(R.registrar))]


async def _agency_registry_caller(agency_id: str, caller: RegistryCaller) -> Caller:
    auth.check_within(auth.confinement(caller), agency_id, f"agency {agency_id}")
    return caller


# Routes with an `{agency_id}` path: the administrator, or that agency's own registrar (403
# `auth.foreign_agency` for another's, before the body is read).
AgencyRegistryCaller = Annotated[Caller, Depends(_agency_registry_caller)]


def problem_response(request: Request, err: BrokerError) -> JSONResponse:
    """Render a domain error as RFC 9457 problem+json with the request id."""
    problem = err.problem(
        instance=request.url.path, request_id=getattr(request.state, "request_id", None)
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=err.status_code,
        media_type="application/problem+json",
        headers=err.headers,
    )
