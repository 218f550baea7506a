"""Partner agencies poll their inbox with a cursor (long-poll with `wait`) and acknowledge."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from broker import db
from broker.deps import AgencyCaller, AgencyWaiter, SessionDep
from broker.errors import Forbidden, NotFound, error_responses
from broker.inbox import service
from broker.inbox.schemas import AckIn, AckOut, InboxPage

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])


@router.get("", responses=error_responses(Forbidden, service.BadCursor))
async def poll(
    caller: AgencyWaiter,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    wait: Annotated[float, Query(ge=0, le=service.MAX_WAIT_S, description="long-poll seconds")] = 0,
) -> InboxPage:
    """Items after the cursor in inbox order; with `wait`, hold the request until one arrives."""
    return await service.long_poll(db.session_scope, caller, after, limit, wait)


@router.post(
    "/{mid}/ack",
    responses=error_responses(Forbidden, NotFound, service.BadAck, service.AckConflict),
)
def ack(mid: uuid.UUID, data: AckIn, caller: AgencyCaller, session: SessionDep) -> AckOut:
    """Record the agency's signed acknowledgement: received, decrypted, or rejected with a reason."""
    return service.acknowledge(session, caller, mid, data.ack)
