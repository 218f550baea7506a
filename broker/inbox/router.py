"""Partner agencies poll their inbox with a cursor (long-poll with `wait`) and acknowledge."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from broker import db
from broker.auth.service import Caller
from broker.deps import AgencyCaller, AgencyWaiter, SessionDep
from broker.errors import Forbidden, NotFound, error_responses
from broker.inbox import notify, service
from broker.inbox.schemas import AckIn, AckOut, InboxPage

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])


def _poll(caller: Caller, after: str | None, limit: int) -> InboxPage:
    # Its own short transaction: a long-poll must not hold a connection while it waits.
    with db.session_scope() as session:
        return service.poll(session, caller, after, limit)


@router.get("", responses=error_responses(Forbidden, service.BadCursor))
async def poll(
    caller: AgencyWaiter,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    wait: Annotated[float, Query(ge=0, le=service.MAX_WAIT_S, description="long-poll seconds")] = 0,
) -> InboxPage:
    """Items after the cursor in inbox order; with `wait`, hold the request until one arrives."""
    agency = caller.agency_id or ""
    seen = notify.board.version(agency)
    page = await run_in_threadpool(_poll, caller, after, limit)
    if page.items or wait <= 0:
        return page
    await run_in_threadpool(service.wait_for, agency, seen, wait)
    return await run_in_threadpool(_poll, caller, after, limit)


@router.post(
    "/{mid}/ack",
    responses=error_responses(Forbidden, NotFound, service.BadAck, service.AckConflict),
)
def ack(mid: uuid.UUID, data: AckIn, caller: AgencyCaller, session: SessionDep) -> AckOut:
    """Record the agency's signed acknowledgement: received, decrypted, or rejected with a reason."""
    return service.acknowledge(session, caller, mid, data.ack)
