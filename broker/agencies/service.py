"""Registering agencies and their focal points."""

from __future__ import annotations

from collections.abc import Sequence

import pycountry
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies import repository
from broker.agencies.models import Agency, FocalPoint
from broker.agencies.schemas import AgencyIn, FocalPointIn
from broker.audit import service as audit
from broker.errors import BrokerError, DuplicateId, FieldProblem, UnknownAgency, exists
from broker.ids import utcnow


class UnknownCountry(BrokerError, code="registry.unknown_country"): ...


class FocalPointOutsideAgency(BrokerError, code="registry.focal_point_outside_agency"): ...


# User-assigned codes in use by partners that ISO 3166-1 (and pycountry) lack.
EXTRA_COUNTRIES = frozenset({"XK"})


async def create_agency(session: AsyncSession, data: AgencyIn, *, actor: str) -> Agency:
    """Register an agency."""
    if await repository.agency(session, data.id) is not None:
        raise DuplicateId(f"agency {data.id!r} already exists")
    if (
        data.country not in EXTRA_COUNTRIES
        and pycountry.countries.get(alpha_2=data.country) is None
    ):
        raise UnknownCountry(
            f"{data.country!r} is not an ISO 3166-1 alpha-2 code",
            errors=[FieldProblem(pointer="/country", detail="not ISO 3166-1 alpha-2")],
        )
    agency = Agency(**data.model_dump(), status="active", created_at=utcnow())
    session.add(agency)
    await session.flush()
    await audit.record(
        session, "agency.created", actor=actor, subject=data.id, details=data.model_dump()
    )
    return agency


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
