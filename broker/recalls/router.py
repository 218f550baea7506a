"""Recall (/v1/messages/{mid}/recall) and the recipients' answers (/v1/inbox/{mid}/compliance)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Response

from broker.crypto.errors import WrongUse
from broker.deps import AgencyCaller, FocalPointCaller, SessionDep, StrictJSONRoute
from broker.errors import JWS_REFUSALS, Forbidden, InvalidRequest, NotFound, error_responses
from broker.messages.service import Purged
from broker.recalls import service
from broker.recalls.schemas import (
    EXAMPLE_COMPLIANCE,
    EXAMPLE_RECALL,
    ComplianceIn,
    ComplianceOut,
    RecallIn,
    RecallOut,
)
from broker.registry.snapshot import KeyNotValidNow, KeyRetired, KeyRevoked, UnknownKey

router = APIRouter(prefix="/v1", tags=["recall"], route_class=StrictJSONRoute)

_KEY_REFUSALS = (UnknownKey, WrongUse, KeyRevoked, KeyRetired, KeyNotValidNow, *JWS_REFUSALS)


@router.post(
    "/messages/{mid}/recall",
    summary="Recall a message",
    status_code=201,
    responses={
        200: {"model": RecallOut, "description": "recalled before: the first recall's result"},
        **error_responses(
            Forbidden,
            service.NotSender,
            NotFound,
            Purged,
            service.BadRecall,
            service.RecallKeyNotSigner,
            service.RidReused,
            InvalidRequest,
            *_KEY_REFUSALS,
        ),
    },
)
async def recall(
    mid: uuid.UUID,
    data: Annotated[
        RecallIn,
        Body(
            openapi_examples={
                "wrong recipient": {
                    "summary": "a `recall+jws` signed by the sending focal point",
                    "value": {"recall": EXAMPLE_RECALL},
                }
            }
        ),
    ],
    caller: FocalPointCaller,
    session: SessionDep,
    response: Response,
) -> RecallOut:
    """Withdraw the copies not yet fetched and send the others a recall notice to answer.

    The body is the sender's signed `recall+jws`; its reason is one of `sent_in_error`,
    `wrong_recipient`, `inaccurate`, `legal_order` and `erasure_request` (the last two with the
    originator's legal reference). A message is recalled once: a second recall answers 200
    with the first one's result.
    """
    out, new = await service.recall(session, caller, mid, data.recall)
    response.status_code = 201 if new else 200
    return out


@router.post(
    "/inbox/{mid}/compliance",
    summary="Answer a recall notice",
    responses=error_responses(
        Forbidden,
        NotFound,
        service.BadCompliance,
        service.ComplianceKeyNotOurs,
        service.AlreadyAnswered,
        InvalidRequest,
        *_KEY_REFUSALS,
    ),
)
async def comply(
    mid: uuid.UUID,
    data: Annotated[
        ComplianceIn,
        Body(
            openapi_examples={
                "erased": {
                    "summary": "a `recall-compliance+jws`: the copies of the message are erased",
                    "value": {"compliance": EXAMPLE_COMPLIANCE},
                }
            }
        ),
    ],
    caller: AgencyCaller,
    session: SessionDep,
) -> ComplianceOut:
    """Record the agency's signed answer to the recall of message `mid`: `erased`, or
    `retained` on a legal ground; due by the recall's deadline, once."""
    return await service.comply(session, caller, mid, data.compliance)
