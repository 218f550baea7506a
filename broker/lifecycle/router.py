"""Legal holds (/v1/holds): auditors and administrators keep messages past their retention."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from broker.audit.auditor import NotOverseen
from broker.auth.service import Caller, Role
from broker.deps import RoleGate, SessionDep, StrictJSONRoute
from broker.errors import Forbidden, InvalidRequest, NotFound, error_responses
from broker.lifecycle import service
from broker.lifecycle.schemas import REASON, REFERENCE, HoldIn, HoldLiftIn, HoldOut, HoldsPage
from broker.messages.service import Purged

router = APIRouter(prefix="/v1/holds", tags=["data lifecycle"], route_class=StrictJSONRoute)

HoldCaller = Annotated[Caller, Depends(RoleGate(Role.auditor, Role.admin))]


@router.post(
    "",
    status_code=201,
    responses=error_responses(Forbidden, NotOverseen, NotFound, Purged, InvalidRequest),
)
async def place_hold(
    data: Annotated[
        HoldIn,
        Body(
            openapi_examples={
                "hold": {
                    "summary": "keep a VN-GDC alert for mutual legal assistance",
                    "value": {
                        "sender": "VN-GDC",
                        "mid": "01938f6e-7b7c-7c3e-9a51-5f0c2b1d4e8a",
                        "reason": REASON,
                        "reference": REFERENCE,
                    },
                }
            }
        ),
    ],
    caller: HoldCaller,
    session: SessionDep,
) -> HoldOut:
    """Suspend the retention purge of one message until the hold is lifted (logged)."""
    return await service.place_hold(session, caller, data)


@router.post(
    "/{hold_id}/lift",
    responses=error_responses(Forbidden, NotOverseen, NotFound, service.HoldLifted, InvalidRequest),
)
async def lift_hold(
    hold_id: uuid.UUID,
    data: Annotated[
        HoldLiftIn,
        Body(
            openapi_examples={
                "lift": {"summary": "the case is closed", "value": {"reason": "Proceedings closed"}}
            }
        ),
    ],
    caller: HoldCaller,
    session: SessionDep,
) -> HoldOut:
    """Lift a hold: the next purge takes the message if its retention has passed (logged)."""
    return await service.lift_hold(session, caller, hold_id, data.reason)


@router.get("", responses=error_responses(Forbidden, InvalidRequest))
async def list_holds(
    caller: HoldCaller,
    session: SessionDep,
    active: Annotated[bool, Query(description="only holds not lifted")] = True,
) -> HoldsPage:
    """Holds on messages naming an agency the caller oversees (an administrator: all)."""
    return HoldsPage(items=await service.holds(session, caller, active=active))
