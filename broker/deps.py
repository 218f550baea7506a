"""Request dependencies: the session, and the role gate every route declares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from anyio import Semaphore
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from broker import db, ratelimit
from broker.auth import service as auth
from broker.auth.service import Caller, Role
from broker.errors import BrokerError, Forbidden

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# One shared Depends object so the concurrency limit is global and matches the pool size.
_session_dep = Depends(db.get_session, scope="function", max_concurrency=20)
SessionDep = Annotated[Session, _session_dep]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class RoleGate:
    """Deny by default: authenticate the bearer token and admit only the listed roles."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    def __call__(self, request: Request, session: SessionDep) -> Caller:
        with ratelimit.guard_authentication(request):
            caller = auth.authenticate(session, _bearer(request))
        request.state.principal = caller.name
        ratelimit.check(request, caller)
        if caller.role not in self.roles:
            raise Forbidden(f"role {caller.role.value} may not call this route")
        return caller


class InThreadRoleGate(RoleGate):
    """A RoleGate that the route calls itself, inside its one transaction (submit, poll, ack).

    On PostgreSQL those routes run on the event loop (`admit_async`, `run_in_transaction`);
    on SQLite in one worker thread (`admit`, `run_in_session`).

    Every sync dependency is a threadpool hop: SessionDep's enter and exit, RoleGate and a
    `def` route make four per request, and under load the hand-offs cost more CPU than the
    submit's own Python (docs/performance.md). As a dependency this gate only declares the
    roles; the route calls `admit` first thing inside `run_in_session`, with the same checks,
    errors and rate limits as RoleGate, before it parses the body (`json_body`), so the order
    of refusals (401/403/429, then 422) is the same as for any other route.
    """

    async def __call__(self, request: Request) -> InThreadRoleGate:  # type: ignore[override]
        return self

    def admit(self, request: Request, session: Session) -> Caller:
        """Authenticate and authorise, as `RoleGate.__call__` (call it in the worker thread)."""
        return RoleGate.__call__(self, request, session)

    async def admit_async(self, request: Request, scope: db.AsyncScope) -> Caller:
        """`admit` on the async path (PostgreSQL): the same checks, errors and order."""
        address = ratelimit.client_address(request)
        await ratelimit.auth_allowed_async(address)
        try:
            caller = await auth.authenticate_async(scope, _bearer(request))
        except BrokerError as exc:
            await ratelimit.auth_failed_async(address, exc)
            raise
        request.state.principal = caller.name
        await ratelimit.check_async(request, caller)
        if caller.role not in self.roles:
            raise Forbidden(f"role {caller.role.value} may not call this route")
        return caller


def _db_slots() -> Semaphore:
    # SessionDep's own semaphore (FastAPI keeps it per event loop): one limit, matching the
    # pool, for both kinds of route. `_concurrency` is FastAPI's (pinned version).
    concurrency = _session_dep._concurrency
    assert concurrency is not None
    semaphore: Semaphore = concurrency.get_semaphore()
    return semaphore


def _scoped(fn: Callable[[Session], T]) -> T:
    with db.session_scope() as session:
        return fn(session)


async def run_in_session(fn: Callable[[Session], T]) -> T:
    """`fn(session)` in one worker thread, committed before this returns (as SessionDep)."""
    async with _db_slots():
        return await run_in_threadpool(_scoped, fn)


async def run_in_transaction(fn: Callable[[db.AsyncScope], Awaitable[T]]) -> T:
    """`fn(scope)` on the event loop, committed before this returns (PostgreSQL only).

    No worker thread: the connection pool (`db.transaction`) bounds the concurrency.
    """
    async with db.transaction() as scope:
        return await fn(scope)


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
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


R = Role
AdminCaller = Annotated[Caller, Depends(RoleGate(R.admin))]
AuditorCaller = Annotated[Caller, Depends(RoleGate(R.auditor))]
FocalPointCaller = Annotated[Caller, Depends(RoleGate(R.focal_point))]
AgencyCaller = Annotated[Caller, Depends(RoleGate(R.agency))]
PartyCaller = Annotated[Caller, Depends(RoleGate(R.focal_point, R.agency))]
AnyCaller = Annotated[Caller, Depends(RoleGate(R.focal_point, R.agency, R.auditor, R.admin))]
FocalPointInThread = Annotated[InThreadRoleGate, Depends(InThreadRoleGate(R.focal_point))]
AgencyInThread = Annotated[InThreadRoleGate, Depends(InThreadRoleGate(R.agency))]


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
