"""API shapes for agreements, operations and designations."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.agencies.schemas import AGENCY_ID

EXAMPLE_AGREEMENT: dict[str, Any] = {
    "id": "VN-NZ-TNC-2019",
    "title": "Viet Nam - New Zealand police cooperation on transnational crime",
    "kind": "police_cooperation",
    "parties": ["NZ-POL", "VN-MPS"],
    "offences": [
        "cybercrime",
        "human_trafficking",
        "money_laundering",
        "narcotics",
        "transnational_organised_crime",
    ],
    "subject_types": ["conveyance", "organisation", "person", "route", "shipment"],
    "valid_from": "2019-07-01",
    "valid_until": None,
    "status": "active",
    "exclusions": [
        {
            "from": "NZ-POL",
            "to": "VN-MPS",
            "offences": ["narcotics"],
            "reason": "Offences that may carry the death penalty: no assistance without an assurance",
            "unless_assurance": True,
        }
    ],
    "assurances": [],
    "max_handling": "TLP:AMBER+STRICT",
    "onward_sharing": "originator_consent",
    "retention": "P5Y",
    "ack_deadline": "PT24H",
}

EXAMPLE_OPERATION: dict[str, Any] = {
    "id": "TWIN-GUARDIAN-II",
    "agreement": "VN-KR-CUSTOMS",
    "title": "Joint operation on narcotics, precursors and NPS sold online",
    "starts_at": "2024-07-01T00:00:00Z",
    "ends_at": "2024-09-01T00:00:00Z",
    "members": ["KR-KCS", "VN-GDC"],
    "status": "active",
}


class AgreementOut(BaseModel):
    id: str
    version: int
    status: str
    sha256: str = Field(description="base64url SHA-256 of the JCS policy document")
    document: dict[str, Any]
    created_at: datetime


class OperationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    agreement_id: str
    version: int
    sha256: str
    status: str
    starts_at: datetime
    ends_at: datetime
    document: dict[str, Any]


class DesignationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agreement: str = Field(examples=["VN-HK-CMAA-2013"])
    valid_from: date = Field(examples=["2023-01-01"])
    valid_until: date | None = Field(default=None, examples=[None])


class DesignationEndIn(BaseModel):
    """When a designation ends: its last day (inclusive), today or later, and why."""

    model_config = ConfigDict(extra="forbid")

    valid_until: date = Field(examples=["2026-06-30"])
    reason: str = Field(min_length=1, max_length=200, examples=["officer reassigned"])


class DesignationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    focal_point_id: str
    agreement_id: str
    valid_from: date
    valid_until: date | None


class Direction(BaseModel):
    """What the caller's agency may send to one partner under one agreement."""

    to: str = Field(pattern=AGENCY_ID)
    offences: list[str]
    excluded: list[dict[str, Any]] = Field(
        description="Offences excluded in this direction, with their legal reason"
    )


class DesignationView(BaseModel):
    """One of the caller's agency's focal points designated under the agreement, and when."""

    focal_point_id: str
    valid_from: date
    valid_until: date | None


EXAMPLE_VIEW: dict[str, Any] = {
    "id": "VN-NZ-TNC-2019",
    "title": EXAMPLE_AGREEMENT["title"],
    "version": 1,
    "policy_sha256": "yZ3e5X1u0Sd6Q8cJ1pV0mB2fT9rK4hL7wN3aG6xE0Qs",
    "status": "active",
    "valid_from": "2019-07-01",
    "valid_until": None,
    "subject_types": EXAMPLE_AGREEMENT["subject_types"],
    "max_handling": "TLP:AMBER+STRICT",
    "onward_sharing": "originator_consent",
    "directions": [
        {
            "to": "VN-MPS",
            "offences": [
                "cybercrime",
                "human_trafficking",
                "money_laundering",
                "transnational_organised_crime",
            ],
            "excluded": [
                {
                    "offences": ["narcotics"],
                    "reason": EXAMPLE_AGREEMENT["exclusions"][0]["reason"],
                    "unless_assurance": True,
                }
            ],
        }
    ],
    "operations": [],
    "designated_focal_points": ["NZ-POL/fp-01"],
    "designations": [
        {"focal_point_id": "NZ-POL/fp-01", "valid_from": "2023-01-01", "valid_until": None}
    ],
}


class AgreementView(BaseModel):
    """An agreement as seen by one party: partners, scope per direction, handling limits."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_VIEW]})

    id: str
    title: str
    version: int
    policy_sha256: str
    status: str
    valid_from: date
    valid_until: date | None
    subject_types: list[str]
    max_handling: str
    onward_sharing: str
    directions: list[Direction]
    operations: list[dict[str, Any]]
    designated_focal_points: list[str]
    designations: list[DesignationView] = Field(
        default_factory=list,
        description="The caller's agency's focal points designated under it, with their periods",
    )
