"""API shapes for agencies and focal points."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.ids import AGENCY_ID, AGENCY_ID_MAX, FOCAL_POINT_ID, FOCAL_POINT_ID_MAX

__all__ = ["AGENCY_ID", "FOCAL_POINT_ID"]

# A state's agencies; then bodies that are not a state's agency: an international body (INCB,
# UNODC), a regional liaison office (WCO RILO A/P) and a border liaison office (a BLO).
AgencyKind = Literal[
    "customs",
    "police",
    "prosecution",
    "wildlife",
    "other",
    "international_body",
    "regional_liaison_office",
    "border_liaison_office",
]


EXAMPLE_AGENCY: dict[str, str] = {
    "id": "VN-GDC",
    "name": "General Department of Vietnam Customs",
    "country": "VN",
    "kind": "customs",
}
EXAMPLE_REGIONAL_OFFICE: dict[str, str | None] = {
    "id": "INT-WCO-RILOAP",
    "name": "WCO Regional Intelligence Liaison Office for Asia and the Pacific",
    "country": None,
    "kind": "regional_liaison_office",
}
EXAMPLE_BLO_DESK: dict[str, str] = {
    "id": "VN-BLO-LAOCAI/fp-desk-01",
    "name": "BLO duty desk, Lao Cai border gate",
    "role": "border liaison officer",
    "locality": "Lao Cai international border gate",
    "subdivision": "VN-02",
}
EXAMPLE_FOCAL_POINT: dict[str, str] = {
    "id": "VN-GDC/fp-hcm-01",
    "name": "Duty desk, Anti-Smuggling Dept (HCMC)",
    "role": "customs liaison officer",
}


class AgencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=AGENCY_ID, max_length=AGENCY_ID_MAX, examples=["VN-GDC"])
    name: str = Field(
        min_length=2, max_length=200, examples=["General Department of Vietnam Customs"]
    )
    country: str | None = Field(
        pattern=r"^[A-Z]{2}$",
        examples=["VN"],
        description="ISO 3166-1 alpha-2; null exactly when the id starts with INT-",
    )
    kind: AgencyKind = Field(examples=["customs"])


class AgencyOut(AgencyIn):
    model_config = ConfigDict(from_attributes=True)

    status: str
    created_at: datetime


class FocalPointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=FOCAL_POINT_ID, max_length=FOCAL_POINT_ID_MAX, examples=["VN-GDC/fp-hcm-01"]
    )
    name: str = Field(
        min_length=2, max_length=200, examples=["Duty desk, Anti-Smuggling Dept (HCMC)"]
    )
    role: str = Field(min_length=2, max_length=200, examples=["customs liaison officer"])
    locality: str | None = Field(
        default=None,
        min_length=2,
        max_length=200,
        description="The border crossing, port or province the focal point serves",
        examples=["Lao Cai international border gate"],
    )
    subdivision: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$",
        description="ISO 3166-2 code of the locality's province or region",
        examples=["VN-02"],
    )


class FocalPointOut(FocalPointIn):
    model_config = ConfigDict(from_attributes=True)

    agency_id: str
    status: str
    created_at: datetime


class StatusChangeIn(BaseModel):
    """Why an agency, focal point or principal is suspended or disabled, or back in service.

    The reason goes on the log (`note`), which auditors and the named agency read: say what
    happened in terms of the arrangement, never personal data.
    """

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1, max_length=200, examples=["MoU renewal pending; exchanges paused"]
    )
