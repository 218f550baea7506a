"""Admin routes for push endpoints (`PUT`/`GET /v1/admin/agencies/{id}/push`)."""

from __future__ import annotations

from fastapi import APIRouter

from broker.deps import AdminCaller, SessionDep, StrictJSONRoute
from broker.errors import Forbidden, InvalidRequest, NotFound, error_responses
from broker.push import destinations, service
from broker.push.schemas import PushEndpointIn, PushEndpointOut

admin = APIRouter(prefix="/v1/admin", tags=["admin: push delivery"], route_class=StrictJSONRoute)


@admin.put(
    "/agencies/{agency_id}/push",
    responses=error_responses(
        Forbidden, NotFound, service.BadPushUrl, destinations.DestinationForbidden, InvalidRequest
    ),
)
async def set_push_endpoint(
    agency_id: str, data: PushEndpointIn, caller: AdminCaller, session: SessionDep
) -> PushEndpointOut:
    """Register, change, enable or disable where the broker POSTs the agency's deliveries."""
    endpoint = await service.set_endpoint(session, agency_id, data, actor=caller.actor)
    return PushEndpointOut.model_validate(endpoint)


@admin.get("/agencies/{agency_id}/push", responses=error_responses(Forbidden, NotFound))
async def get_push_endpoint(
    agency_id: str, caller: AdminCaller, session: SessionDep
) -> PushEndpointOut:
    """The agency's push endpoint."""
    return PushEndpointOut.model_validate(await service.get_endpoint(session, agency_id))
