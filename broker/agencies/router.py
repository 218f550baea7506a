"""Agencies and focal points: the admin registry and the public listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from broker.agencies import service
from broker.agencies.schemas import (
    EXAMPLE_AGENCY,
    EXAMPLE_BLO_DESK,
    EXAMPLE_FOCAL_POINT,
    EXAMPLE_REGIONAL_OFFICE,
    AgencyIn,
    AgencyOut,
    FocalPointIn,
    FocalPointOut,
    StatusChangeIn,
)
from broker.auth import service as auth
from broker.deps import (
    AdminCaller,
    AgencyRegistryCaller,
    AnyCaller,
    RegistryCaller,
    SessionDep,
    StrictJSONRoute,
)
from broker.errors import (
    DuplicateId,
    Forbidden,
    ForeignAgency,
    InvalidRequest,
    NotFound,
    StatusUnchanged,
    UnknownAgency,
    error_responses,
)

admin = APIRouter(prefix="/v1/admin", tags=["admin: agencies"], route_class=StrictJSONRoute)
public = APIRouter(prefix="/v1/directory", tags=["directory"], route_class=StrictJSONRoute)


@admin.post(
    "/agencies",
    status_code=201,
    responses=error_responses(Forbidden, DuplicateId, service.UnknownCountry, InvalidRequest),
)
async def create_agency(
    data: Annotated[
        AgencyIn,
        Body(
            openapi_examples={
                "customs": {"summary": "a customs agency", "value": EXAMPLE_AGENCY},
                "regional office": {
                    "summary": "a regional liaison office: an INT- id and no country",
                    "value": EXAMPLE_REGIONAL_OFFICE,
                },
            }
        ),
    ],
    caller: AdminCaller,
    session: SessionDep,
) -> AgencyOut:
    """Register an agency."""
    return AgencyOut.model_validate(await service.create_agency(session, data, actor=caller.actor))


@admin.get("/agencies", responses=error_responses(Forbidden))
async def list_agencies(caller: AdminCaller, session: SessionDep) -> list[AgencyOut]:
    """Every registered agency."""
    return [AgencyOut.model_validate(a) for a in await service.list_agencies(session)]


@admin.get("/agencies/{agency_id}", responses=error_responses(Forbidden, ForeignAgency, NotFound))
async def get_agency(
    agency_id: str, caller: AgencyRegistryCaller, session: SessionDep
) -> AgencyOut:
    """One agency (a registrar: its own)."""
    return AgencyOut.model_validate(await service.get_agency(session, agency_id))


@admin.post(
    "/agencies/{agency_id}/focal-points",
    status_code=201,
    responses=error_responses(
        Forbidden,
        ForeignAgency,
        DuplicateId,
        UnknownAgency,
        service.FocalPointOutsideAgency,
        service.UnknownSubdivision,
        InvalidRequest,
    ),
)
async def create_focal_point(
    agency_id: str,
    data: Annotated[
        FocalPointIn,
        Body(
            openapi_examples={
                "duty desk": {"summary": "a focal point of VN-GDC", "value": EXAMPLE_FOCAL_POINT},
                "border liaison office": {
                    "summary": "a BLO desk with the border crossing it serves",
                    "value": EXAMPLE_BLO_DESK,
                },
            }
        ),
    ],
    caller: AgencyRegistryCaller,
    session: SessionDep,
) -> FocalPointOut:
    """Register a focal point of an agency (a registrar: of its own)."""
    fp = await service.create_focal_point(session, agency_id, data, actor=caller.actor)
    return FocalPointOut.model_validate(fp)


@admin.get("/focal-points", responses=error_responses(Forbidden, ForeignAgency))
async def list_focal_points(
    caller: RegistryCaller, session: SessionDep, agency: str | None = None
) -> list[FocalPointOut]:
    """Focal points, optionally of one agency (a registrar: its own only)."""
    agency = auth.filter_within(caller, agency)
    return [
        FocalPointOut.model_validate(fp) for fp in await service.list_focal_points(session, agency)
    ]


_STATUS_ERRORS = error_responses(Forbidden, ForeignAgency, NotFound, StatusUnchanged)
# The body of every suspend, reactivate, disable and enable (the auth router's too).
StatusBody = Annotated[
    StatusChangeIn,
    Body(
        openapi_examples={
            "reason": {
                "summary": "why, for the log",
                "value": {"reason": "MoU renewal pending; exchanges paused"},
            }
        }
    ),
]


@admin.post("/agencies/{agency_id}/suspend", responses=_STATUS_ERRORS)
async def suspend_agency(
    agency_id: str, data: StatusBody, caller: AdminCaller, session: SessionDep
) -> AgencyOut:
    """Suspend an agency: its tokens are refused and its focal points may not submit;
    deliveries to it wait, queued, until it is reactivated (409 if already suspended)."""
    agency = await service.suspend_agency(
        session, agency_id, reason=data.reason, actor=caller.actor
    )
    return AgencyOut.model_validate(agency)


@admin.post("/agencies/{agency_id}/reactivate", responses=_STATUS_ERRORS)
async def reactivate_agency(
    agency_id: str, data: StatusBody, caller: AdminCaller, session: SessionDep
) -> AgencyOut:
    """Reactivate a suspended agency; the deliveries held meanwhile arrive in order."""
    agency = await service.reactivate_agency(
        session, agency_id, reason=data.reason, actor=caller.actor
    )
    return AgencyOut.model_validate(agency)


@admin.post("/focal-points/{agency_id}/{slug}/suspend", responses=_STATUS_ERRORS)
async def suspend_focal_point(
    agency_id: str, slug: str, data: StatusBody, caller: AgencyRegistryCaller, session: SessionDep
) -> FocalPointOut:
    """Suspend a focal point: its tokens are refused and it may not submit."""
    fp = await service.suspend_focal_point(
        session, f"{agency_id}/{slug}", reason=data.reason, actor=caller.actor
    )
    return FocalPointOut.model_validate(fp)


@admin.post("/focal-points/{agency_id}/{slug}/reactivate", responses=_STATUS_ERRORS)
async def reactivate_focal_point(
    agency_id: str, slug: str, data: StatusBody, caller: AgencyRegistryCaller, session: SessionDep
) -> FocalPointOut:
    """Put a suspended focal point back in service."""
    fp = await service.reactivate_focal_point(
        session, f"{agency_id}/{slug}", reason=data.reason, actor=caller.actor
    )
    return FocalPointOut.model_validate(fp)


@public.get("/agencies", summary="Agencies you may address", responses=error_responses(Forbidden))
async def directory_agencies(caller: AnyCaller, session: SessionDep) -> list[AgencyOut]:
    """The parties any authenticated caller may address."""
    return [AgencyOut.model_validate(a) for a in await service.list_agencies(session)]
