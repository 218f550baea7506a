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
from broker.ids import INTERNATIONAL, utcnow


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
