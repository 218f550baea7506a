"""Submitting messages, dry-running scope, and following their delivery."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from broker import db
from broker.deps import (
    FocalPointCaller,
    FocalPointInThread,
    PartyCaller,
    SessionDep,
    json_body,
    problem_response,
    run_in_session,
    run_in_transaction,
)
from broker.errors import Forbidden, NotFound, error_responses
from broker.faults import crash_point
from broker.messages import service
from broker.messages.schemas import CheckIn, CheckOut, MessageStatus, Receipt, SubmitIn

router = APIRouter(prefix="/v1", tags=["messages"])

_SUBMIT_ERRORS = (
    Forbidden,
    service.MissingIdempotencyKey,
    service.InFlight,
    service.MidReused,
    service.BadRouting,
    service.IatOutOfWindow,
    service.UnknownKey,
    service.KeyRevoked,
    service.RecipientNoKey,
    service.scope_error("scope.direction_excluded"),
)


# The body is parsed in the route, after authentication (see `submit`), and the header is
# read there too (FastAPI's header parameter cost 10 % of a submit's CPU): documented here.
_SUBMIT_DOC = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            # What FastAPI generates for an optional `str | None` header parameter.
            "schema": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "must equal the mid",
                "title": "Idempotency-Key",
            },
            "description": "must equal the mid",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SubmitIn.model_json_schema()}},
    },
}
_IDEMPOTENCY_KEY = b"idempotency-key"


@router.post(
    "/messages",
    status_code=201,
    response_model=Receipt,
    responses={
        200: {"model": Receipt, "description": "the same envelope again: the original receipt"},
        **error_responses(*_SUBMIT_ERRORS),
    },
    openapi_extra=_SUBMIT_DOC,
)
async def submit(request: Request, gate: FocalPointInThread) -> Response:
    """Submit a signed, encrypted envelope; the answer carries the broker's signed receipt.

    The hot path. On PostgreSQL, authentication, body validation and the service run on the
    event loop with one async connection and transaction (`deps.run_in_transaction`): no
    worker thread at all. On SQLite they run in one worker thread and one transaction with
    the sync service, instead of one threadpool hop per sync dependency (ARCHITECTURE
    decision 9, measured in docs/performance.md). Same checks, same order, same rows.
    """
    body = await request.body()
    idempotency_key = next(
        (v.decode("latin-1") for k, v in request.scope["headers"] if k == _IDEMPOTENCY_KEY), None
    )

    if db.async_enabled():

        async def work_async(scope: db.AsyncScope) -> service.Outcome:
            caller = await gate.admit_async(request, scope)
            data = json_body(SubmitIn, request, body)
            return await service.submit_async(scope, caller, data.envelope, idempotency_key)

        outcome = await run_in_transaction(work_async)
    else:

        def work(session: Session) -> service.Outcome:
            caller = gate.admit(request, session)
            data = json_body(SubmitIn, request, body)
            return service.submit(session, caller, data.envelope, idempotency_key)

        outcome = await run_in_session(work)  # committed, refusals' audit events included
    crash_point("submit.after_commit")
    if outcome.refusal is not None:
        return problem_response(request, outcome.refusal)
    assert outcome.receipt is not None
    # Serialised by pydantic-core in one step; the same bytes as the response model would give.
    return Response(
        outcome.receipt.model_dump_json(),
        status_code=outcome.status,
        media_type="application/json",
    )


@router.post("/messages:check", responses=error_responses(Forbidden))
def check(data: CheckIn, caller: FocalPointCaller, session: SessionDep) -> CheckOut:
    """Dry-run the scope decision for a routing header, and learn each recipient's key."""
    return service.check(session, caller, data.routing)


@router.get("/messages/{mid}", responses=error_responses(Forbidden, NotFound))
def status(mid: uuid.UUID, caller: PartyCaller, session: SessionDep) -> MessageStatus:
    """Delivery and acknowledgement state per recipient (the sender agency only)."""
    return service.status(session, caller, mid)
