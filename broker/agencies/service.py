"""Registering agencies and their focal points."""

from __future__ import annotations

from collections.abc import Sequence

import pycountry
from sqlalchemy.ext.asyncio import AsyncSession

from broker import jobs
from broker.agencies import repository
from broker.agencies.models import Agency, FocalPoint
from broker.agencies.schemas import AgencyIn, FocalPointIn
from broker.audit import service as audit
from broker.errors import (
    BrokerError,
    DuplicateId,
    FieldProblem,
    StatusUnchanged,
    UnknownAgency,
    exists,
)
from broker.ids import INTERNATIONAL, utcnow
from broker.inbox import repository as inbox_repo
from broker.messages.models import OUTBOX_DELIVER


class UnknownCountry(BrokerError, code="registry.unknown_country"): ...


class FocalPointOutsideAgency(BrokerError, code="registry.focal_point_outside_agency"): ...


class UnknownSubdivision(BrokerError, code="registry.unknown_subdivision"): ...


# Bodies that belong to no state; their ids start with INT- and they have no country.
INTERNATIONAL_KINDS = frozenset({"international_body", "regional_liaison_office"})


# User-assigned codes in use by partners that ISO 3166-1 (and pycountry) lack.
EXTRA_COUNTRIES = frozenset({"XK"})


async def create_agency(session: AsyncSession, data: AgencyIn, *, actor: str) -> Agency:
    """Register an agency."""
    if await repository.agency(session, data.id) is not None:
        raise DuplicateId(f"agency {data.id!r} already exists")
    _check_country(data)
    agency = Agency(**data.model_dump(), status="active", created_at=utcnow())
    session.add(agency)
    await session.flush()
    await audit.record(
        session, "agency.created", actor=actor, subject=data.id, details=data.model_dump()
    )
    return agency


def _check_country(data: AgencyIn) -> None:
    """A state's agency has its country; an international or regional body (INT-) has none."""
    international = data.id.split("-")[0] == INTERNATIONAL
    if international != (data.country is None):
        detail = (
            "must be null for an INT- body" if international else "required for a state's agency"
        )
        raise UnknownCountry(
            f"country {detail}", errors=[FieldProblem(pointer="/country", detail=detail)]
        )
    if international != (data.kind in INTERNATIONAL_KINDS):
        kinds = " or ".join(sorted(INTERNATIONAL_KINDS))
        raise UnknownCountry(
            f"INT- ids are for {kinds}, and those have INT- ids",
            errors=[FieldProblem(pointer="/kind", detail=f"INT- ids go with {kinds}")],
        )
    if (
        data.country is not None
        and data.country not in EXTRA_COUNTRIES
        and pycountry.countries.get(alpha_2=data.country) is None
    ):
        raise UnknownCountry(
            f"{data.country!r} is not an ISO 3166-1 alpha-2 code",
            errors=[FieldProblem(pointer="/country", detail="not ISO 3166-1 alpha-2")],
        )


async def get_agency(session: AsyncSession, agency_id: str) -> Agency:
    return exists(await repository.agency(session, agency_id), f"agency {agency_id!r}")


async def list_agencies(session: AsyncSession) -> Sequence[Agency]:
    return await repository.agencies(session)


async def create_focal_point(
    session: AsyncSession, agency_id: str, data: FocalPointIn, *, actor: str
) -> FocalPoint:
    """Register a focal point of an agency (designations come with agreements)."""
    if await repository.agency(session, agency_id) is None:
        raise UnknownAgency(f"no agency {agency_id!r}")
    if not data.id.startswith(agency_id + "/"):
        raise FocalPointOutsideAgency(
            f"focal point ids of {agency_id} start with '{agency_id}/'",
            errors=[FieldProblem(pointer="/id", detail=f"must start with {agency_id}/")],
        )
    if await repository.focal_point(session, data.id) is not None:
        raise DuplicateId(f"focal point {data.id!r} already exists")
    # pycountry's subdivisions are untyped; `get` answers None for an unknown code.
    code = data.subdivision
    if code is not None and pycountry.subdivisions.get(code=code) is None:  # type: ignore[no-untyped-call]
        raise UnknownSubdivision(
            f"{data.subdivision!r} is not an ISO 3166-2 code",
            errors=[FieldProblem(pointer="/subdivision", detail="not ISO 3166-2")],
        )
    fp = FocalPoint(**data.model_dump(), agency_id=agency_id, status="active", created_at=utcnow())
    session.add(fp)
    await session.flush()
    # Focal point names are duty desks, not people; the leaf still carries only ids.
    await audit.record(
        session, "focal_point.created", actor=actor, subject=data.id, details={"agency": agency_id}
    )
    return fp


async def list_focal_points(
    session: AsyncSession, agency_id: str | None = None
) -> Sequence[FocalPoint]:
    return await repository.focal_points(session, agency_id)


# --- suspension and reactivation --------------------------------------------------------------
#
# A suspended agency or focal point keeps its rows, keys, designations and tokens; only its
# status changes, and the change is logged in the same transaction. Asking for the status it
# already has is 409 `registry.status_unchanged` and logs nothing: the log holds changes only,
# and a second reason is never silently dropped. Where a suspension bites:
# - authentication refuses the tokens bound to a suspended focal point or agency
#   (`auth.principal_suspended`, `auth.service.caller_of`);
# - `decide` refuses a submission from a suspended focal point, or from any focal point of a
#   suspended agency (`scope.focal_point_inactive`, `registry.snapshot.load`);
# - deliveries to a suspended agency are held `queued` by the relay (`inbox.service._deliver`)
#   and released, in order, by `reactivate_agency`.


async def suspend_agency(
    session: AsyncSession, agency_id: str, *, reason: str, actor: str
) -> Agency:
    """Suspend an agency: its principals' tokens are refused, its focal points may not submit,
    and deliveries to it wait, queued, until it is reactivated."""
    agency = await _change_agency(session, agency_id, "suspended")
    await audit.record(
        session,
        "agency.suspended",
        actor=actor,
        subject=agency_id,
        details={"agency": agency_id, "note": reason},
    )
    return agency


async def reactivate_agency(
    session: AsyncSession, agency_id: str, *, reason: str, actor: str
) -> Agency:
    """Reactivate an agency and release the deliveries held while it was suspended.

    Release: one outbox `deliver` row per message with a delivery to the agency still queued,
    oldest message first, written in this transaction. The relay then numbers them in that
    order after any already in the inbox; a message whose delivery the relay has made available
    meanwhile finds nothing queued (a no-op), so nothing is duplicated, and a row for a message
    whose outbox row is still pending is one more no-op. The relay reads the agency's status
    under its row lock (`inbox.repository.recipient_statuses`), so a relay running during this
    transaction either waits for it and delivers, or held its rows before this update and this
    query sees them queued: nothing is skipped.
    """
    agency = await _change_agency(session, agency_id, "active")
    held = await repository.held_messages(session, agency_id)
    await inbox_repo.add_outbox(session, OUTBOX_DELIVER, held, utcnow())
    if held:
        jobs.after_commit(session, jobs.RELAY)
    await audit.record(
        session,
        "agency.reactivated",
        actor=actor,
        subject=agency_id,
        details={"agency": agency_id, "note": reason, "released": len(held)},
    )
    return agency


async def _change_agency(session: AsyncSession, agency_id: str, status: str) -> Agency:
    agency = await get_agency(session, agency_id)
    if agency.status == status:
        raise StatusUnchanged(f"agency {agency_id} is already {status}")
    agency.status = status
    await session.flush()
    return agency


async def suspend_focal_point(
    session: AsyncSession, focal_point_id: str, *, reason: str, actor: str
) -> FocalPoint:
    """Suspend a focal point: its principals' tokens are refused and it may not submit."""
    return await _change_focal_point(session, focal_point_id, "suspended", reason, actor)


async def reactivate_focal_point(
    session: AsyncSession, focal_point_id: str, *, reason: str, actor: str
) -> FocalPoint:
    """Put a suspended focal point back in service (its agency's status still applies)."""
    return await _change_focal_point(session, focal_point_id, "active", reason, actor)


async def _change_focal_point(
    session: AsyncSession, focal_point_id: str, status: str, reason: str, actor: str
) -> FocalPoint:
    fp = exists(
        await repository.focal_point(session, focal_point_id), f"focal point {focal_point_id!r}"
    )
    if fp.status == status:
        raise StatusUnchanged(f"focal point {focal_point_id} is already {status}")
    fp.status = status
    await session.flush()
    await audit.record(
        session,
        "focal_point.suspended" if status == "suspended" else "focal_point.reactivated",
        actor=actor,
        subject=focal_point_id,
        details={"agency": fp.agency_id, "note": reason},
    )
    return fp
