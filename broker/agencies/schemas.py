"""API shapes for agencies and focal points."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AGENCY_ID = r"^[A-Z]{2}-[A-Z0-9]{2,10}$"
FOCAL_POINT_ID = r"^[A-Z]{2}-[A-Z0-9]{2,10}/[a-z0-9][a-z0-9-]{1,30}$"
AgencyKind = Literal["customs", "police", "prosecution", "wildlife", "other"]


EXAMPLE_AGENCY: dict[str, str] = {
    "id": "VN-GDC",
    "name": "General Department of Vietnam Customs",
    "country": "VN",
    "kind": "customs",
}
EXAMPLE_FOCAL_POINT: dict[str, str] = {
    "id": "VN-GDC/fp-hcm-01",
    "name": "Duty desk, Anti-Smuggling Dept (HCMC)",
    "role": "customs liaison officer",
}


class AgencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=AGENCY_ID, examples=["VN-GDC"])
    name: str = Field(
        min_length=2, max_length=200, examples=["General Department of Vietnam Customs"]
    )
    country: str = Field(pattern=r"^[A-Z]{2}$", examples=["VN"])
    kind: AgencyKind = Field(examples=["customs"])


class AgencyOut(AgencyIn):
    model_config = ConfigDict(from_attributes=True)

    status: str
    created_at: datetime


class FocalPointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=FOCAL_POINT_ID, examples=["VN-GDC/fp-hcm-01"])
    name: str = Field(
        min_length=2, max_length=200, examples=["Duty desk, Anti-Smuggling Dept (HCMC)"]
    )
    role: str = Field(min_length=2, max_length=200, examples=["customs liaison officer"])


class FocalPointOut(FocalPointIn):
    model_config = ConfigDict(from_attributes=True)

    agency_id: str
    status: str
    created_at: datetime
