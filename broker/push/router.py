"""Admin routes for push endpoints (`PUT`/`GET /v1/admin/agencies/{id}/push`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from broker.deps import AgencyRegistryCaller, SessionDep, StrictJSONRoute
from broker.errors import Forbidden, ForeignAgency, InvalidRequest, NotFound, error_responses
from broker.push import destinations, service
from broker.push.schemas import PushEndpointIn, PushEndpointOut

admin = APIRouter(prefix="/v1/admin", tags=["admin: push delivery"], route_class=StrictJSONRoute)


@admin.put(
    "/agencies/{agency_id}/push",
    responses=error_responses(
        Forbidden,
        ForeignAgency,
        NotFound,
        service.BadPushUrl,
        destinations.DestinationForbidden,
        InvalidRequest,
    ),
)
async def set_push_endpoint(
    agency_id: str,
    data: Annotated[
        PushEndpointIn,
        Body(
            openapi_examples={
                "enable": {
                    "summary": "push HK-CED's deliveries to its gateway",
                    "value": {"url": "https://alerts.customs.gov.hk/broker/push", "enabled": True},
                },
                "disable": {
                    "summary": "stop pushing the agency's deliveries",
                    "value": {"url": "https://alerts.customs.gov.hk/broker/push", "enabled": False},
                },
            }
        ),
    ],
    caller: AgencyRegistryCaller,
    session: SessionDep,
) -> PushEndpointOut:
    """Register, change, enable or disable where the broker POSTs the agency's deliveries
    (the administrator, or the agency's own registrar)."""
    endpoint = await service.set_endpoint(session, agency_id, data, actor=caller.actor)
    return PushEndpointOut.model_validate(endpoint)


@admin.get(
    "/agencies/{agency_id}/push", responses=error_responses(Forbidden, ForeignAgency, NotFound)
)
async def get_push_endpoint(
    agency_id: str, caller: AgencyRegistryCaller, session: SessionDep
) -> PushEndpointOut:
    """The agency's push endpoint."""
    return PushEndpointOut.model_validate(await service.get_endpoint(session, agency_id))
