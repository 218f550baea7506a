"""Operation results (/v1/operations/{operation_id}/results)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from broker.audit.auditor import BadCursor, BadFilter, NotOverseen
from broker.auth.service import Caller, Role
from broker.deps import RoleGate, SessionDep, StrictJSONRoute
from broker.errors import Forbidden, NotFound, error_responses
from broker.results import service
from broker.results.schemas import FeedbackPage, ResultsOut

router = APIRouter(prefix="/v1/operations", tags=["operation results"], route_class=StrictJSONRoute)

# Auditors, and the coordinating agency's principals; the service checks which operation.
ResultsReader = Annotated[Caller, Depends(RoleGate(Role.auditor, Role.agency, Role.focal_point))]
OperationId = Annotated[
    str, Path(max_length=64, description="The operation's id", examples=["MEKONG-DRAGON-V"])
]
Phase = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Only the feedback accepted in this phase; `outside` for none",
        examples=["p2-targeting"],
    ),
]
Value = Annotated[str | None, Query(max_length=64)]
_ERRORS = (Forbidden, NotOverseen, NotFound, BadFilter)
CSV_EXAMPLE = (
    "phase,week,agency,outcome,commodity,quantity_band,count\r\n"
    "p2-targeting,2026-W49,HK-CED,seized,narcotics,10_100kg,2\r\n"
    "p2-targeting,2026-W50,CN-GACC,no_find,none,none,1\r\n"
)


@router.get(
    "/{operation_id}/results",
    summary="Operation results",
    responses=error_responses(*_ERRORS),
)
async def results(
    operation_id: OperationId, caller: ResultsReader, session: SessionDep, phase: Phase = None
) -> ResultsOut:
    """The feedback on the operation's alerts, counted by phase, ISO week (UTC, of the broker's
    acceptance), sending agency, outcome, commodity and quantity band, with each dimension's
    totals. For the coordinating agency (all figures) and auditors who oversee a member (the
    feedback sent by or to the agencies they oversee)."""
    return await service.results(session, caller, operation_id, phase=phase)


@router.get(
    "/{operation_id}/results.csv",
    summary="Operation results as CSV",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {"example": CSV_EXAMPLE}}},
        **error_responses(*_ERRORS),
    },
)
async def results_csv(
    operation_id: OperationId, caller: ResultsReader, session: SessionDep, phase: Phase = None
) -> Response:
    """The grouped counts of `GET .../results` as CSV: one row per phase, week, agency,
    outcome, commodity and quantity band, with its count (`outside` and `none` for absent
    values)."""
    text = await service.results_csv(session, caller, operation_id, phase=phase)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{operation_id}-results.csv"'},
    )


@router.get(
    "/{operation_id}/results/feedback",
    summary="Feedback behind a figure",
    responses=error_responses(*_ERRORS, BadCursor),
)
async def feedback(
    operation_id: OperationId,
    caller: ResultsReader,
    session: SessionDep,
    phase: Phase = None,
    week: Annotated[
        str | None, Query(max_length=16, description="ISO 8601 week", examples=["2026-W49"])
    ] = None,
    agency: Annotated[
        str | None, Query(max_length=16, description="The sending agency", examples=["HK-CED"])
    ] = None,
    outcome: Annotated[str | None, Query(max_length=32, examples=["seized"])] = None,
    commodity: Annotated[
        str | None,
        Query(max_length=32, description="A commodity code, or `none`", examples=["narcotics"]),
    ] = None,
    quantity_band: Annotated[
        str | None,
        Query(max_length=32, description="A quantity band, or `none`", examples=["10_100kg"]),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = service.PAGE,
) -> FeedbackPage:
    """The feedback messages a figure counts (the same filters, any combination), oldest first:
    mid, sender, the alert answered, acceptance time, and the leaf index of its `msg.accepted`
    event, to check with an inclusion proof (`GET /v1/log/proof/inclusion`)."""
    values = {
        "phase": phase,
        "week": week,
        "agency": agency,
        "outcome": outcome,
        "commodity": commodity,
        "quantity_band": quantity_band,
    }
    return await service.feedback(session, caller, operation_id, values, cursor=cursor, limit=limit)
