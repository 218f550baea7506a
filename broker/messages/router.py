"""Submitting messages, dry-running scope, and following their delivery."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response

from broker import db
from broker.crypto import errors as crypto_errors
from broker.deps import (
    FocalPointCaller,
    PartyCaller,
    SessionDep,
    StrictJSONRoute,
    json_body,
    problem_response,
)
from broker.errors import (
    JWS_REFUSALS,
    ErrorSpec,
    Forbidden,
    InvalidRequest,
    NotFound,
    OutOfScope,
    error_responses,
)
from broker.faults import crash_point
from broker.messages import service
from broker.messages.schemas import (
    EXAMPLE_ENVELOPE,
    EXAMPLE_ROUTING,
    CheckIn,
    CheckOut,
    MessageStatus,
    OverduePage,
    Receipt,
    SubmitIn,
)
from broker.registry.snapshot import KeyNotValidNow, KeyRetired, KeyRevoked, UnknownKey

router = APIRouter(prefix="/v1", tags=["messages"], route_class=StrictJSONRoute)

_SUBMIT_ERRORS: tuple[ErrorSpec, ...] = (
    Forbidden,
    service.NotTheSigner,
    *JWS_REFUSALS,
    crypto_errors.WrongUse,
    crypto_errors.SenderMismatch,
    crypto_errors.JweStructure,
    crypto_errors.LowOrderEpk,
    crypto_errors.JweRecipientsMismatch,
    service.MissingIdempotencyKey,
    service.IdempotencyKeyMismatch,
    service.InFlight,
    service.MidReused,
    service.BadRouting,
    service.IatOutOfWindow,
    service.BadExpiry,
    UnknownKey,
    KeyRevoked,
    KeyRetired,
    KeyNotValidNow,
    service.RecipientNoKey,
    OutOfScope,
    service.CorrectionUnknown,
    service.CorrectionAgreementDiffers,
    service.CorrectionRecipientsDiffer,
    service.AlreadySuperseded,
    service.Purged,
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
        "content": {
            "application/json": {
                "schema": SubmitIn.model_json_schema(),
                "examples": {
                    "alert": {
                        "summary": "an alert envelope built by the SDK",
                        "value": {"envelope": EXAMPLE_ENVELOPE},
                    }
                },
            }
        },
    },
}
_IDEMPOTENCY_KEY = b"idempotency-key"


@router.post(
    "/messages",
    summary="Submit a message",
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

    Send `Idempotency-Key: <mid>`. The same envelope again answers 200 with the original
    receipt; a refusal is a problem whose `code` says why, and is recorded on the log.
    Authentication and role are checked before the body (401, 403 and 429 come before 422).
    """
    # The body is parsed here, after the role gate; the answer is sent after the commit (a
    # refusal's audit event is committed with it).
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


@router.post(
    "/messages:check",
    summary="Dry-run a routing header",
    responses=error_responses(Forbidden),
)
async def check(
    data: Annotated[
        CheckIn,
        Body(
            openapi_examples={
                "alert": {
                    "summary": "an alert's routing header",
                    "value": {"routing": EXAMPLE_ROUTING},
                }
            }
        ),
    ],
    caller: FocalPointCaller,
    session: SessionDep,
) -> CheckOut:
    """Dry-run the scope decision for a routing header, and learn each recipient's key.

    A refusal is not an error here: the answer says `reject` with the code a submit of this
    header would be refused with (`scope.*`, `envelope.bad_routing`, `key.recipient_no_key`...).
    """
    return await service.check(session, caller, data.routing)


@router.get(
    "/messages:overdue",
    summary="Our copies overdue for acknowledgement",
    responses=error_responses(Forbidden, InvalidRequest),
)
async def overdue(
    caller: PartyCaller,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> OverduePage:
    """The caller's agency's copies not acknowledged by their agreement's deadline (for urgent
    alerts the shorter `ack_deadline_urgent`): urgent ones first, then the longest overdue."""
    return await service.overdue(session, caller, limit)


@router.get(
    "/messages/{mid}",
    summary="Delivery status of a message",
    responses=error_responses(Forbidden, NotFound, service.Purged),
)
async def status(mid: uuid.UUID, caller: PartyCaller, session: SessionDep) -> MessageStatus:
    """Delivery and acknowledgement state per recipient (the sender agency only).

    Each delivery carries the recipient's signed acknowledgement exactly as it sent it, the log
    leaf that recorded it once sequenced, and the mids of the recipient's feedback on it.
    """
    return await service.status(session, caller, mid)
