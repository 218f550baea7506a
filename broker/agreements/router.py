"""Agreements, operations, designations; and what a party may send to whom."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body

from broker import world
from broker.agreements import changes, service
from broker.agreements.models import AgreementVersion
from broker.agreements.schemas import (
    EXAMPLE_AGREEMENT,
    EXAMPLE_APPROVAL,
    EXAMPLE_OPERATION,
    AgreementOut,
    AgreementView,
    ApprovalIn,
    DesignationEndIn,
    DesignationIn,
    DesignationOut,
    OperationOut,
    ProposalOut,
    RestrictionIn,
    RestrictionOut,
)
from broker.deps import (
    AdminCaller,
    AgencyRegistryCaller,
    PartyCaller,
    RegistrarCaller,
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
    error_responses,
)

admin = APIRouter(prefix="/v1/admin", tags=["admin: agreements"], route_class=StrictJSONRoute)
public = APIRouter(prefix="/v1", tags=["agreements"], route_class=StrictJSONRoute)

AgreementDoc = Annotated[
    dict[str, Any],
    Body(
        openapi_examples={
            "VN-NZ-TNC-2019": {"summary": "per-direction exclusion", "value": EXAMPLE_AGREEMENT}
        }
    ),
]
OperationDoc = Annotated[
    dict[str, Any],
    Body(
        openapi_examples={
            "TWIN-GUARDIAN-II": {"summary": "joint operation", "value": EXAMPLE_OPERATION}
        }
    ),
]
_DOC_ERRORS = (
    Forbidden,
    DuplicateId,
    service.InvalidDocument,
    service.UnknownParty,
    service.UnknownOffence,
    service.UnknownSubjectType,
    service.BadValidity,
)


def _out(v: AgreementVersion) -> AgreementOut:
    return AgreementOut(
        id=v.agreement_id,
        version=v.version,
        status=v.document["status"],
        sha256=v.sha256,
        document=v.document,
        created_at=v.created_at,
    )


@admin.post("/agreements", status_code=201, responses=error_responses(*_DOC_ERRORS))
async def create_agreement(
    document: AgreementDoc, caller: AdminCaller, session: SessionDep
) -> AgreementOut:
    """Register an agreement (version 1 of its policy document)."""
    return _out(await service.create_agreement(session, document, actor=caller.actor))


@admin.get("/agreements", responses=error_responses(Forbidden))
async def list_agreements(caller: AdminCaller, session: SessionDep) -> list[AgreementOut]:
    """Current version of every agreement."""
    return [_out(v) for v in await service.list_current(session)]


@admin.get(
    "/agreements/{agreement_id}/versions",
    responses=error_responses(Forbidden, NotFound, changes.NotParty),
)
async def agreement_versions(
    agreement_id: str, caller: RegistryCaller, session: SessionDep
) -> list[AgreementOut]:
    """Every version of an agreement, oldest first (a registrar: of its agency's agreements)."""
    return [_out(v) for v in await changes.versions_for(session, caller, agreement_id)]


@admin.post(
    "/operations",
    status_code=201,
    responses=error_responses(*_DOC_ERRORS, service.UnknownAgreement, service.NotAParty),
)
async def create_operation(
    document: OperationDoc, caller: AdminCaller, session: SessionDep
) -> OperationOut:
    """Register an operation: a window and members inside an agreement."""
    return OperationOut.model_validate(
        await service.create_operation(session, document, actor=caller.actor)
    )


@admin.get("/operations", responses=error_responses(Forbidden))
async def list_operations(caller: AdminCaller, session: SessionDep) -> list[OperationOut]:
    """Every operation."""
    return [OperationOut.model_validate(op) for op in await service.list_operations(session)]


@admin.put(
    "/operations/{operation_id}",
    responses=error_responses(*_DOC_ERRORS, NotFound, service.IdMismatch, service.NotAParty),
)
async def update_operation(
    operation_id: str, document: OperationDoc, caller: AdminCaller, session: SessionDep
) -> OperationOut:
    """Change an operation's window, members or status."""
    return OperationOut.model_validate(
        await service.update_operation(session, operation_id, document, actor=caller.actor)
    )


@admin.post(
    "/focal-points/{agency_id}/{slug}/designations",
    summary="Designate a focal point",
    status_code=201,
    responses=error_responses(
        Forbidden,
        ForeignAgency,
        NotFound,
        service.UnknownAgreement,
        service.NotAParty,
        service.ValidityOverlap,
        service.BadValidity,
    ),
)
async def designate(
    agency_id: str,
    slug: str,
    data: Annotated[
        DesignationIn,
        Body(
            openapi_examples={
                "open-ended": {
                    "summary": "designated from 2023 until further notice",
                    "value": {"agreement": "VN-HK-CMAA-2013", "valid_from": "2023-01-01"},
                }
            }
        ),
    ],
    caller: AgencyRegistryCaller,
    session: SessionDep,
) -> DesignationOut:
    """Designate a focal point under an agreement for a period (a registrar: its own agency's
    focal points, under agreements its agency is party to)."""
    row = await service.designate(session, f"{agency_id}/{slug}", data, actor=caller.actor)
    return DesignationOut.model_validate(row)


@admin.get(
    "/focal-points/{agency_id}/{slug}/designations",
    summary="List a focal point's designations",
    responses=error_responses(Forbidden, ForeignAgency),
)
async def designations(
    agency_id: str, slug: str, caller: AgencyRegistryCaller, session: SessionDep
) -> list[DesignationOut]:
    """A focal point's designations."""
    return [
        DesignationOut.model_validate(d)
        for d in await service.designations(session, f"{agency_id}/{slug}")
    ]


@admin.post(
    "/focal-points/{agency_id}/{slug}/designations/{agreement_id}/end",
    summary="End a focal point's designation",
    responses=error_responses(
        Forbidden, ForeignAgency, NotFound, service.BadValidity, StatusUnchanged
    ),
)
async def end_designation(
    agency_id: str,
    slug: str,
    agreement_id: str,
    data: Annotated[
        DesignationEndIn,
        Body(
            openapi_examples={
                "end of June": {
                    "summary": "designated until 30 June (inclusive)",
                    "value": {"valid_until": "2026-06-30", "reason": "officer reassigned"},
                }
            }
        ),
    ],
    caller: AgencyRegistryCaller,
    session: SessionDep,
) -> DesignationOut:
    """Set the last day of the designation under the agreement that covers that day."""
    row = await service.end_designation(
        session, f"{agency_id}/{slug}", agreement_id, data, actor=caller.actor
    )
    return DesignationOut.model_validate(row)


@admin.post("/world", responses=error_responses(*_DOC_ERRORS))
async def load_world(
    document: Annotated[
        dict[str, Any],
        Body(
            description="agencies, focal_points, agreements, operations",
            openapi_examples={
                "small world": {
                    "summary": "one agency",
                    "value": {
                        "agencies": [
                            {
                                "id": "TH-CUS",
                                "name": "Thai Customs Department",
                                "country": "TH",
                                "kind": "customs",
                            }
                        ],
                        "focal_points": [],
                        "agreements": [],
                        "operations": [],
                    },
                }
            },
        ),
    ],
    caller: AdminCaller,
    session: SessionDep,
) -> dict[str, dict[str, int]]:
    """Create a whole world from one document; ids that already exist are skipped."""
    loaded = await world.load_world(session, document, actor=caller.actor)
    return {"created": loaded.created, "skipped": loaded.skipped}


@public.get("/agreements", responses=error_responses(Forbidden))
async def my_agreements(caller: PartyCaller, session: SessionDep) -> list[AgreementView]:
    """For the caller's agency: each agreement, partners, offences per direction, limits."""
    return await service.views_for(session, caller)


# --- changes approved by the parties (broker/agreements/changes.py) ------------------------


@public.post(
    "/agreements/{agreement_id}/proposals",
    status_code=201,
    responses=error_responses(*_DOC_ERRORS, NotFound, service.IdMismatch, changes.NotParty),
)
async def propose_agreement_change(
    agreement_id: str, document: AgreementDoc, caller: RegistryCaller, session: SessionDep
) -> ProposalOut:
    """Propose a new version of an agreement (the full document): it takes effect once the
    parties approve it. The administrator, or the registrar of a party; it supersedes an open
    proposal of the same agreement."""
    return await changes.propose(session, caller, agreement_id, document)


@public.get(
    "/agreements/{agreement_id}/proposals",
    responses=error_responses(Forbidden, NotFound, changes.NotParty),
)
async def agreement_proposals(
    agreement_id: str, caller: RegistryCaller, session: SessionDep
) -> list[ProposalOut]:
    """The agreement's proposals with their approvals, oldest first (a joining party's
    registrar sees those that name its agency)."""
    return await changes.proposals(session, caller, agreement_id)


@public.post(
    "/agreements/{agreement_id}/proposals/{proposal_id}/approvals",
    responses=error_responses(
        Forbidden,
        NotFound,
        changes.NotParty,
        changes.ApprovalInvalid,
        changes.ApprovalKeyNotParty,
        changes.ProposalExpired,
        changes.ProposalStale,
    ),
)
async def approve_agreement_change(
    agreement_id: str,
    proposal_id: uuid.UUID,
    data: Annotated[
        ApprovalIn,
        Body(
            openapi_examples={
                "approval": {
                    "summary": "an `agreement-approval+jws` signed with the agency's key",
                    "value": {"approval": EXAMPLE_APPROVAL},
                }
            }
        ),
    ],
    caller: RegistrarCaller,
    session: SessionDep,
) -> ProposalOut:
    """Approve a proposal for the registrar's agency with its signed `agreement-approval+jws`;
    the version takes effect with the approval that completes the quorum. Idempotent: the same
    agency again gets the proposal as it stands."""
    return await changes.approve(session, caller, agreement_id, proposal_id, data.approval)


@public.post(
    "/agreements/{agreement_id}/restrictions",
    status_code=201,
    responses=error_responses(
        Forbidden,
        NotFound,
        changes.NotParty,
        StatusUnchanged,
        InvalidRequest,
        service.InvalidDocument,
    ),
)
async def restrict_agreement(
    agreement_id: str,
    data: Annotated[
        RestrictionIn,
        Body(
            openapi_examples={
                "suspend": {
                    "summary": "suspend the agreement at once",
                    "value": {"action": "suspend", "reason": "Data protection review"},
                },
                "exclude": {
                    "summary": "stop sending NPS alerts to one partner",
                    "value": {
                        "action": "exclude",
                        "to": "KR-KCS",
                        "offences": ["nps"],
                        "reason": "Domestic review of NPS scheduling",
                    },
                },
            }
        ),
    ],
    caller: RegistrarCaller,
    session: SessionDep,
) -> RestrictionOut:
    """Narrow the agreement at once, without approvals: a party's registrar suspends it, or
    excludes offences from its own agency to one partner (a new version). Lifting either is a
    proposal."""
    version = await changes.restrict(session, caller, agreement_id, data)
    return RestrictionOut(agreement=_out(version), action=data.action)
