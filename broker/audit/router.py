"""The transparency log (/v1/log) and the auditor's tools (/v1/audit)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import AwareDatetime

from broker import db
from broker.audit import auditor, keyrotation, log, witness
from broker.audit.repository import EventFilter
from broker.audit.schemas import (
    EXAMPLE_COSIGNED,
    EXAMPLE_WITNESS,
    EXAMPLE_WITNESS_VKEY,
    ConsistencyProofOut,
    CosignatureIn,
    CosignaturesOut,
    EventsPage,
    InclusionProofOut,
    LeavesPage,
    NodesPage,
    Summary,
    WitnessIn,
    WitnessOut,
    WitnessRef,
)
from broker.auth.service import Caller, Role
from broker.deps import (
    AdminCaller,
    AgencyCaller,
    AnyCaller,
    AuditorCaller,
    RoleGate,
    SessionDep,
    StrictJSONRoute,
)
from broker.errors import (
    DuplicateId,
    Forbidden,
    InvalidRequest,
    NotFound,
    UnknownAgency,
    error_responses,
)

public = APIRouter(prefix="/v1/log", tags=["transparency log"], route_class=StrictJSONRoute)
router = APIRouter(prefix="/v1/audit", tags=["audit"], route_class=StrictJSONRoute)
admin = APIRouter(prefix="/v1/admin", tags=["admin: transparency log"], route_class=StrictJSONRoute)

LeafReader = Annotated[Caller, Depends(RoleGate(Role.auditor, Role.agency))]
MAX_INDEX = 2**62
Index = Annotated[int, Query(ge=0, le=MAX_INDEX)]
Name = Annotated[str | None, Query(max_length=64)]


@public.get(
    "/checkpoint",
    summary="Log checkpoint, with its witnesses' cosignatures",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"example": EXAMPLE_COSIGNED}}},
        **error_responses(
            log.NoCheckpoint, witness.CheckpointUnknown, witness.NotCosigned, InvalidRequest
        ),
    },
)
async def checkpoint(
    caller: AnyCaller,
    session: SessionDep,
    size: Annotated[
        int | None,
        Query(ge=1, le=MAX_INDEX, description="this size's checkpoint instead of the latest"),
    ] = None,
    cosigned: Annotated[
        int | None,
        Query(
            ge=1,
            le=100,
            description="the latest checkpoint carrying at least this many cosignatures",
        ),
    ] = None,
) -> PlainTextResponse:
    """A signed checkpoint (C2SP tlog-checkpoint signed note) followed by the cosignature
    lines (C2SP tlog-cosignature) its registered witnesses sent.

    Without parameters, the latest; with `size`, the one of that tree size; with `cosigned=K`,
    the latest one that K witnesses have cosigned. Verifiers ignore lines of keys they do not
    know, so the log key alone still verifies it.
    """
    if size is not None and cosigned is not None:
        raise InvalidRequest("give `size` or `cosigned`, not both")
    note = await witness.checkpoint_note(session, size=size, cosigned=cosigned)
    return PlainTextResponse(note)


@public.get(
    "/witnesses",
    summary="Registered witnesses",
    responses=error_responses(),
)
async def witnesses(caller: AnyCaller, session: SessionDep) -> list[WitnessOut]:
    """The witnesses that cosign the log's checkpoints: name, verifier key, agency, status.

    Pin the keys of the witnesses you trust from their agencies, not from this list.
    """
    return [WitnessOut.model_validate(w) for w in await witness.list_witnesses(session)]


@public.post(
    "/cosignatures",
    summary="Send a witness's cosignature",
    responses=error_responses(
        witness.CheckpointUnknown,
        witness.CheckpointMismatch,
        witness.WitnessUnknown,
        witness.CosignatureInvalid,
        witness.CosignatureFuture,
        InvalidRequest,
    ),
)
async def cosign(
    data: Annotated[
        CosignatureIn,
        Body(
            openapi_examples={
                "cosigned": {
                    "summary": "the size-8 checkpoint with HK-CED's witness's line",
                    "value": {"checkpoint": EXAMPLE_COSIGNED},
                }
            }
        ),
    ],
    caller: AgencyCaller,
    session: SessionDep,
) -> CosignaturesOut:
    """Store the cosignatures that the caller's agency's active witnesses added to a checkpoint.

    Send the checkpoint exactly as the log signed it (its text must equal the stored one) with
    the witness's cosignature line added. Idempotent: the same line again answers the same; a
    newer timestamp replaces the stored line; an older one leaves it.
    """
    return await witness.submit(session, caller, data.checkpoint)


@public.get(
    "/key",
    summary="Log verifier key, and the earlier ones with their rotations",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {
                "text/plain": {"example": keyrotation.EXAMPLE_LOG_KEY + "\n"},
                "application/json": {"example": keyrotation.EXAMPLE_LOG_KEYS},
            }
        },
        **error_responses(InvalidRequest),
    },
)
async def key(
    caller: AnyCaller,
    session: SessionDep,
    fmt: Annotated[
        Literal["text", "json"],
        Query(
            alias="format",
            description="`json`: every log key with the sizes it signs, and the rotations",
        ),
    ] = "text",
) -> Response:
    """The log's verifier key `<origin>+<key id>+<base64 key>`: pin it out of band, then verify.

    With `format=json`: the current key, every retired one with the times and tree sizes it
    signed, and each rotation's leaf (index, bytes) and statement signed by the retired key,
    so a verifier pinned to an old key can follow the chain (docs/protocol.md).
    """
    if fmt == "json":
        return JSONResponse(await keyrotation.log_keys(session))
    return PlainTextResponse(log.verifier_key() + "\n")


@public.get(
    "/proof/inclusion",
    responses=error_responses(log.NoCheckpoint, log.OutOfRange, log.LogCorrupt, InvalidRequest),
)
async def inclusion_proof(
    caller: AnyCaller,
    session: SessionDep,
    index: Index,
    size: Annotated[int | None, Query(ge=1, le=MAX_INDEX)] = None,
) -> InclusionProofOut:
    """Inclusion proof of leaf `index` in the tree of `size` leaves (default: latest)."""
    return await log.inclusion(session, index, size)


@public.get(
    "/proof/consistency",
    responses=error_responses(log.NoCheckpoint, log.OutOfRange, log.LogCorrupt, InvalidRequest),
)
async def consistency_proof(
    caller: AnyCaller,
    session: SessionDep,
    size1: Annotated[int, Query(alias="from", ge=1, le=MAX_INDEX)],
    size2: Annotated[int | None, Query(alias="to", ge=1, le=MAX_INDEX)] = None,
) -> ConsistencyProofOut:
    """Consistency proof from tree size `from` to `to` (default: latest)."""
    return await log.consistency(session, size1, size2)


@public.get(
    "/leaves",
    summary="Log leaves",
    responses=error_responses(Forbidden, log.NoCheckpoint, InvalidRequest),
)
async def leaves(
    caller: LeafReader,
    session: SessionDep,
    start: Index = 0,
    end: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
    limit: Annotated[int, Query(ge=1, le=log.MAX_LEAVES)] = log.MAX_LEAVES,
) -> LeavesPage:
    """Leaves in [start, end) naming an agency the caller oversees (auditor) or is (agency)."""
    return await log.leaves(session, caller, start=start, end=end, limit=limit)


@public.get(
    "/nodes",
    summary="Log subtree hashes",
    responses=error_responses(log.NoCheckpoint, log.LogCorrupt, InvalidRequest),
)
async def nodes(
    caller: AnyCaller,
    session: SessionDep,
    level: Annotated[int, Query(ge=0, le=63)] = 0,
    start: Index = 0,
    end: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
) -> NodesPage:
    """Stored subtree hashes of one level (at most 4096), for full verification of the store."""
    return await log.nodes(session, level=level, start=start, end=end)


async def event_filter(  # async: pure, so no worker thread
    since: Annotated[AwareDatetime | None, Query(description="created at or after")] = None,
    until: Annotated[AwareDatetime | None, Query(description="created before")] = None,
    agency: Annotated[str | None, Query(max_length=16, description="events naming it")] = None,
    agreement: Name = None,
    operation: Name = None,
    kind: Annotated[list[str] | None, Query(max_length=20)] = None,
    reason: Name = None,
) -> EventFilter:
    """Event filters shared by the query, summary and export routes.

    Text no stored value can hold (a NUL, other control characters) is refused here: the
    export streams its pages after its 200, where PostgreSQL's refusal of a NUL would cut
    the body short instead of answering 422.
    """
    for name, value in (
        ("agency", agency),
        ("agreement", agreement),
        ("operation", operation),
        ("reason", reason),
        *(("kind", k) for k in kind or ()),
    ):
        if value is not None and any(ord(c) < 0x20 or c == "\x7f" for c in value):
            raise auditor.BadFilter(f"{name} holds a control character")
    return EventFilter(
        since=since,
        until=until,
        agency=agency,
        agreement=agreement,
        operation=operation,
        kinds=tuple(kind or ()),
        reason=reason,
    )


Filters = Annotated[EventFilter, Depends(event_filter)]
AUDIT_ERRORS = (Forbidden, auditor.NotOverseen, auditor.BadFilter, InvalidRequest)


@router.get("/events", responses=error_responses(*AUDIT_ERRORS, auditor.BadCursor))
async def audit_events(
    caller: AuditorCaller,
    session: SessionDep,
    filters: Filters,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=auditor.MAX_PAGE)] = 100,
) -> EventsPage:
    """Events matching the filters, oldest first, with a keyset cursor; metadata only."""
    return await auditor.events(session, caller, filters, cursor=cursor, limit=limit)


@router.get("/summary", responses=error_responses(*AUDIT_ERRORS))
async def audit_summary(caller: AuditorCaller, session: SessionDep, filters: Filters) -> Summary:
    """Volume by direction and offence, rejections by reason, delivery and ack delays."""
    return await auditor.summary(session, caller, filters)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}},
        **error_responses(*AUDIT_ERRORS, log.NoCheckpoint),
    },
)
async def audit_export(
    caller: AuditorCaller,
    session: SessionDep,
    filters: Filters,
    format: auditor.ExportFormat = "json",
) -> StreamingResponse:
    """Matching events with the current checkpoint and inclusion proofs, verifiable offline."""
    plan = await auditor.start_export(session, caller, filters, format)
    media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
    return StreamingResponse(
        auditor.export_chunks(db.session_scope, plan),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit-export.{format}"'},
    )


@admin.post(
    "/witnesses",
    status_code=201,
    responses=error_responses(
        Forbidden, witness.WitnessKeyInvalid, UnknownAgency, DuplicateId, InvalidRequest
    ),
)
async def register_witness(
    data: Annotated[
        WitnessIn,
        Body(
            openapi_examples={
                "witness": {
                    "summary": "HK-CED's witness",
                    "value": {"vkey": EXAMPLE_WITNESS_VKEY, "agency": "HK-CED"},
                }
            }
        ),
    ],
    caller: AdminCaller,
    session: SessionDep,
) -> WitnessOut:
    """Register a witness run by an agency, by the verifier key it printed at `witness init`."""
    row = await witness.register(session, data, actor=caller.actor)
    return WitnessOut.model_validate(row)


@admin.post(
    "/witnesses/retire",
    responses=error_responses(Forbidden, NotFound, InvalidRequest),
)
async def retire_witness(
    data: Annotated[
        WitnessRef,
        Body(
            openapi_examples={
                "witness": {"summary": "HK-CED's witness", "value": {"name": EXAMPLE_WITNESS}}
            }
        ),
    ],
    caller: AdminCaller,
    session: SessionDep,
) -> WitnessOut:
    """Stop accepting a witness's cosignatures (those it sent stay served).

    The name is in the body: witness names may hold `/`.
    """
    row = await witness.retire(session, data.name, actor=caller.actor)
    return WitnessOut.model_validate(row)
