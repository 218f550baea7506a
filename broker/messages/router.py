"""Submitting messages, dry-running scope, and following their delivery."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker import db
from broker.deps import (
    FocalPointCaller,
    PartyCaller,
    SessionDep,
    StrictJSONRoute,
    json_body,
    problem_response,
)
from broker.errors import Forbidden, NotFound, OutOfScope, error_responses
from broker.faults import crash_point
from broker.messages import service
from broker.messages.schemas import CheckIn, CheckOut, MessageStatus, Receipt, SubmitIn
from broker.registry.snapshot import KeyNotValidNow, KeyRetired, KeyRevoked, UnknownKey

router = APIRouter(prefix="/v1", tags=["messages"], route_class=StrictJSONRoute)

_SUBMIT_ERRORS = (
    Forbidden,
    service.MissingIdempotencyKey,
    service.InFlight,
    service.MidReused,
    service.BadRouting,
    service.IatOutOfWindow,
    UnknownKey,
    KeyRevoked,
    KeyRetired,
    KeyNotValidNow,
    service.RecipientNoKey,
    OutOfScope,
)


# The body is parsed in the route, after authentication (see `submit`), and the header is
# read there too (a FastAPI header parameter costs a visible share of a submit's CPU): both
# are documented here.
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
async def submit(request: Request, caller: FocalPointCaller, session: SessionDep) -> Response:
    """Submit a signed, encrypted envelope; the answer carries the broker's signed receipt.

    The body is parsed here, after the role gate, so that 401/403/429 come before 422. The
    answer is sent after the commit (a refusal's audit event is committed with it).
    """
    body = await request.body()
    idempotency_key = next(
        (v.decode("latin-1") for k, v in request.scope["headers"] if k == _IDEMPOTENCY_KEY), None
    )
    data = json_body(SubmitIn, request, body)
    outcome = await service.submit(session, caller, data.envelope, idempotency_key)
    db.after_commit(session, _AFTER_COMMIT, _crash_after_commit)
    if outcome.refusal is not None:
        return problem_response(request, outcome.refusal)
    assert outcome.receipt is not None
    # Serialised by pydantic-core in one step; the same bytes as the response model would give.
    return Response(
        outcome.receipt.model_dump_json(),
        status_code=outcome.status,
        media_type="application/json",
    )


_AFTER_COMMIT = "submit.after_commit"


def _crash_after_commit() -> None:
    crash_point(_AFTER_COMMIT)


@router.post("/messages:check", responses=error_responses(Forbidden))
async def check(data: CheckIn, caller: FocalPointCaller, session: SessionDep) -> CheckOut:
    """Dry-run the scope decision for a routing header, and learn each recipient's key."""
    return await service.check(session, caller, data.routing)


@router.get("/messages/{mid}", responses=error_responses(Forbidden, NotFound))
async def status(mid: uuid.UUID, caller: PartyCaller, session: SessionDep) -> MessageStatus:
    """Delivery and acknowledgement state per recipient (the sender agency only)."""
    return await service.status(session, caller, mid)
