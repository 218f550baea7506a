"""Partner agencies poll their inbox with a cursor (long-poll with `wait`) and acknowledge."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from broker import db, ratelimit
from broker.auth.service import Caller
from broker.deps import AgencyInThread, json_body, run_in_session, run_in_transaction
from broker.errors import Forbidden, NotFound, error_responses
from broker.inbox import notify, service
from broker.inbox.schemas import AckIn, AckOut, InboxPage

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])


@router.get("", response_model=InboxPage, responses=error_responses(Forbidden, service.BadCursor))
async def poll(
    request: Request,
    gate: AgencyInThread,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    wait: Annotated[float, Query(ge=0, le=service.MAX_WAIT_S, description="long-poll seconds")] = 0,
) -> Response:
    """Items after the cursor in inbox order; with `wait`, hold the request until one arrives.

    Authentication and the first read share one transaction: on the event loop with an async
    connection on PostgreSQL, in one worker thread on SQLite (as the submit). Only a poll
    that found nothing and may wait takes one of the agency's long-poll slots (429 when they
    are all held), and holds it while it waits, with no thread nor connection.
    """
    if wait > 0:
        notify.ensure_listener()  # listening before the first read: no wake-up is missed

    if db.async_enabled():

        async def first_async(scope: db.AsyncScope) -> tuple[Caller, service.Polled]:
            caller = await gate.admit_async(request, scope)
            return caller, await service.poll_seen_async(scope, caller, after, limit)

        caller, polled = await run_in_transaction(first_async)
    else:

        def first(session: Session) -> tuple[Caller, service.Polled]:
            caller = gate.admit(request, session)
            return caller, service.poll_seen(session, caller, after, limit)

        caller, polled = await run_in_session(first)
    page = polled.page
    if not page.items and wait > 0:
        with ratelimit.long_poll_slot(request, caller):
            page = await service.long_poll(
                db.session_scope, caller, after, limit, wait, first=polled
            )
    return Response(page.model_dump_json(), media_type="application/json")


# Parsed in the route after authentication, as the submit's body (documented here).
_ACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": AckIn.model_json_schema()}},
    }
}


@router.post(
    "/{mid}/ack",
    response_model=AckOut,
    responses=error_responses(Forbidden, NotFound, service.BadAck, service.AckConflict),
    openapi_extra=_ACK_BODY,
)
async def ack(mid: uuid.UUID, request: Request, gate: AgencyInThread) -> Response:
    """Record the agency's signed acknowledgement: received, decrypted, or rejected with a reason.

    One acknowledgement per delivery makes this the busiest route. As the submit: on
    PostgreSQL, authentication, the body and the service run on the event loop with one async
    connection and transaction (`deps.run_in_transaction`); on SQLite in one worker thread
    and one transaction. Same checks, same order, same rows.
    """
    body = await request.body()
    if db.async_enabled():

        async def work_async(scope: db.AsyncScope) -> AckOut:
            caller = await gate.admit_async(request, scope)
            data = json_body(AckIn, request, body)
            return await service.acknowledge_async(scope, caller, mid, data.ack)

        out = await run_in_transaction(work_async)
    else:

        def work(session: Session) -> AckOut:
            caller = gate.admit(request, session)
            data = json_body(AckIn, request, body)
            return service.acknowledge(session, caller, mid, data.ack)

        out = await run_in_session(work)
    return Response(out.model_dump_json(), media_type="application/json")
