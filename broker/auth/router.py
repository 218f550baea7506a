"""Principals and tokens (admin), and who am I."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body

from broker.agencies.router import StatusBody
from broker.auth import service
from broker.auth.models import Credential
from broker.auth.schemas import (
    EXAMPLE_PRINCIPALS,
    Me,
    PrincipalIn,
    PrincipalOut,
    TokenIn,
    TokenOut,
)
from broker.auth.service import Caller
from broker.deps import AnyCaller, RegistryCaller, SessionDep, StrictJSONRoute
from broker.errors import (
    DuplicateId,
    Forbidden,
    ForeignAgency,
    InvalidRequest,
    NotFound,
    StatusUnchanged,
    error_responses,
)

admin = APIRouter(prefix="/v1/admin", tags=["admin: access"], route_class=StrictJSONRoute)
public = APIRouter(prefix="/v1", tags=["access"], route_class=StrictJSONRoute)


def _token_out(principal: str, issued: tuple[Credential, str]) -> TokenOut:
    credential, secret = issued
    return TokenOut(
        id=credential.id,
        principal=principal,
        prefix=credential.prefix,
        expires_at=credential.expires_at,
        token=secret,
    )


@admin.post(
    "/principals",
    status_code=201,
    responses=error_responses(Forbidden, ForeignAgency, DuplicateId, InvalidRequest),
)
async def create_principal(
    data: Annotated[
        PrincipalIn,
        Body(
            openapi_examples={
                name: {"summary": f"a principal of role {value['role']}", "value": value}
                for name, value in EXAMPLE_PRINCIPALS.items()
            }
        ),
    ],
    caller: RegistryCaller,
    session: SessionDep,
) -> TokenOut:
    """Create a principal and return its first token (shown once).

    A principal is bound to a focal point (`focal_point`), an agency (`agency`, or
    `registrar`: the agency's own administrator), the agencies it oversees (`auditor`, all
    when `audit_agencies` is null) or everything (`admin`). A registrar creates its own
    agency's `focal_point` and `agency` principals only.
    """
    principal = await service.create_principal(
        session,
        name=data.name,
        role=data.role,
        actor=caller.actor,
        agency_id=data.agency_id,
        focal_point_id=data.focal_point_id,
        audit_agencies=data.audit_agencies,
        within=service.confinement(caller),
    )
    return _token_out(
        principal.name,
        await service.issue_token(session, principal, actor=caller.actor, ttl_days=data.ttl_days),
    )


@admin.get("/principals", responses=error_responses(Forbidden, ForeignAgency))
async def list_principals(
    caller: RegistryCaller, session: SessionDep, agency: str | None = None
) -> list[PrincipalOut]:
    """Every principal, optionally of one agency (a registrar: its own agency's only); never
    their tokens."""
    agency = service.filter_within(caller, agency)
    return [
        PrincipalOut.model_validate(p)
        for p in await service.list_principals(session, agency_id=agency)
    ]


@admin.post(
    "/principals/{name}/tokens",
    status_code=201,
    responses=error_responses(Forbidden, ForeignAgency, NotFound),
)
async def issue_token(
    name: str,
    data: Annotated[
        TokenIn,
        Body(
            openapi_examples={
                "30 days": {"summary": "expires in 30 days", "value": {"ttl_days": 30}}
            }
        ),
    ],
    caller: RegistryCaller,
    session: SessionDep,
) -> TokenOut:
    """Issue another token for a principal (rotation)."""
    principal = await service.principal_by_name(session, name, within=service.confinement(caller))
    return _token_out(
        name,
        await service.issue_token(session, principal, actor=caller.actor, ttl_days=data.ttl_days),
    )


@admin.post(
    "/principals/{name}/disable",
    responses=error_responses(Forbidden, ForeignAgency, NotFound, StatusUnchanged),
)
async def disable_principal(
    name: str, data: StatusBody, caller: RegistryCaller, session: SessionDep
) -> PrincipalOut:
    """Disable a principal: all its tokens stop working at once (409 if already disabled)."""
    principal = await service.set_principal_status(
        session,
        name,
        "disabled",
        reason=data.reason,
        actor=caller.actor,
        within=service.confinement(caller),
    )
    return PrincipalOut.model_validate(principal)


@admin.post(
    "/principals/{name}/enable",
    responses=error_responses(Forbidden, ForeignAgency, NotFound, StatusUnchanged),
)
async def enable_principal(
    name: str, data: StatusBody, caller: RegistryCaller, session: SessionDep
) -> PrincipalOut:
    """Enable a disabled principal again: its unexpired, unrevoked tokens work again."""
    principal = await service.set_principal_status(
        session,
        name,
        "active",
        reason=data.reason,
        actor=caller.actor,
        within=service.confinement(caller),
    )
    return PrincipalOut.model_validate(principal)


@admin.post(
    "/tokens/{token_id}/revoke",
    status_code=204,
    responses=error_responses(Forbidden, ForeignAgency, NotFound),
)
async def revoke_token(token_id: uuid.UUID, caller: RegistryCaller, session: SessionDep) -> None:
    """Revoke a token; it stops working at once."""
    await service.revoke_token(
        session, token_id, actor=caller.actor, within=service.confinement(caller)
    )


@public.get("/me", summary="Who am I", responses=error_responses(Forbidden))
async def me(caller: AnyCaller) -> Me:
    """The authenticated principal and its binding."""
    return _me(caller)


def _me(caller: Caller) -> Me:
    return Me(
        name=caller.name,
        role=caller.role.value,
        agency_id=caller.agency_id,
        focal_point_id=caller.focal_point_id,
        audit_agencies=sorted(caller.audit_agencies) if caller.audit_agencies is not None else None,
    )
