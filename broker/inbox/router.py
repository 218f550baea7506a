"""Partner agencies poll their inbox with a cursor (long-poll with `wait`) and acknowledge."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from broker import db, deps, ratelimit
from broker.auth.service import Caller
from broker.deps import AgencyCaller, SessionDep, StrictJSONRoute
from broker.errors import JWS_REFUSALS, Forbidden, NotFound, error_responses
from broker.inbox import notify, service
from broker.inbox.schemas import EXAMPLE_ACK, AckIn, AckOut, InboxPage
from broker.registry.snapshot import KeyNotValidNow, KeyRetired, KeyRevoked

router = APIRouter(prefix="/v1/inbox", tags=["inbox"], route_class=StrictJSONRoute)


@router.get(
    "",
    summary="Poll the inbox",
    response_model=InboxPage,
    responses=error_responses(Forbidden, service.BadCursor),
)
async def poll(
    request: Request,
    caller: AgencyCaller,
    session: SessionDep,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    wait: Annotated[float, Query(ge=0, le=service.MAX_WAIT_S, description="long-poll seconds")] = 0,
) -> Response:
    """Items after the cursor in inbox order; with `wait`, hold the request until one arrives.

    A page holds at most `limit` items and stops before the envelope that would take it past
    the broker's page byte budget (the first item always comes); `more` is true when another
    item is waiting after it: ask again at once with `after=next_cursor`. An agency holds a
    few long polls at once; one more is refused with 429 `rate.limited`.
    """
    # Authentication and the first read share the request's transaction. A poll that found
    # nothing and may wait answers with `_Waiting`, which waits after that transaction has
    # committed, holding neither a thread nor a connection, in one of the agency's long-poll
    # slots.
    if wait > 0:
        notify.ensure_listener()  # listening before the first read: no wake-up is missed
    polled = await service.poll_seen(session, caller, after, limit)
    if polled.page.items or wait <= 0:
        return Response(polled.page.model_dump_json(), media_type="application/json")
    return _Waiting(request, caller, polled, after, limit, wait)


class _Waiting(Response):
    """The answer to a poll that found nothing: sent once a delivery arrives or `wait` ends.

    FastAPI closes the route's session (its commit) before it sends the response, so the
    wait, here, holds no connection; its later reads take their own short transactions.
    """

    media_type = "application/json"

    def __init__(
        self,
        request: Request,
        caller: Caller,
        first: service.Polled,
        after: str | None,
        limit: int,
        wait: float,
    ) -> None:
        super().__init__()
        self.request, self.caller, self.first = request, caller, first
        self.after, self.limit, self.wait = after, limit, wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with ratelimit.long_poll_slot(self.request, self.caller):
            page = await service.long_poll(
                db.session_scope, self.caller, self.after, self.limit, self.wait, first=self.first
            )
        self.body = self.render(page.model_dump_json())
        self.init_headers()
        await super().__call__(scope, receive, send)


# Parsed in the route after authentication, so that 401/403/429 come before 422 (documented here).
_ACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": AckIn.model_json_schema(),
                "examples": {
                    "decrypted": {
                        "summary": "an `ack+jws` built by the SDK",
                        "value": {"ack": EXAMPLE_ACK},
                    }
                },
            }
        },
    }
}


@router.post(
    "/{mid}/ack",
    summary="Acknowledge a message",
    response_model=AckOut,
    responses=error_responses(
        Forbidden,
        NotFound,
        service.BadAck,
        service.AckKeyNotOurs,
        KeyRevoked,
        KeyRetired,
        KeyNotValidNow,
        *JWS_REFUSALS,
        service.AckConflict,
    ),
    openapi_extra=_ACK_BODY,
)
async def ack(
    mid: uuid.UUID, request: Request, caller: AgencyCaller, session: SessionDep
) -> Response:
    """Record the agency's signed acknowledgement: received, decrypted, or rejected with a reason."""
    data = deps.json_body(AckIn, request, await request.body())
    out = await service.acknowledge(session, caller, mid, data.ack)
    return Response(out.model_dump_json(), media_type="application/json")
