"""API shapes for agreements, operations and designations."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.agencies.schemas import AGENCY_ID
from broker.schemas.vocab import Offence

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


# --- changes approved by the parties (broker/agreements/changes.py) ---------------------------

EXAMPLE_APPROVAL = (
    "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoiM1E3bV9ZaEJ1Z0FfM0tfTnl2LUFhWGVFcHBNbVBnTHJnTjJGYkJqNkY0cyIs"
    "InR5cCI6ImFncmVlbWVudC1hcHByb3ZhbCtqd3MifQ.eyJ2IjoxfQ.c2lnbmF0dXJl"
)


class ApprovalIn(BaseModel):
    """A JWS `agreement-approval+jws` signed with a signing key of the registrar's agency."""

    model_config = ConfigDict(extra="forbid")

    approval: str = Field(min_length=1, max_length=8192, examples=[EXAMPLE_APPROVAL])


class ApprovalOut(BaseModel):
    agency: str
    approved_by: str
    approved_at: datetime
    kid: str
    approval_sha256: str = Field(description="base64url SHA-256 of the approval JWS as received")


class ProposalOut(BaseModel):
    """A proposed version, the approvals it has and the ones it still needs."""

    id: uuid.UUID
    agreement_id: str
    base_version: int = Field(
        description="the version it changes; it cannot take effect once another is current"
    )
    policy_sha256: str = Field(
        description="base64url SHA-256 of the JCS proposed document: what approvals sign"
    )
    status: Literal["open", "adopted", "superseded", "expired", "stale"] = Field(
        description="`stale`: still open, but its base version is no longer current"
    )
    proposed_by: str
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    version: int | None = Field(description="the version it became, once adopted")
    approvers: list[str] = Field(
        description="who may approve: the base version's parties and any joining party"
    )
    joining: list[str] = Field(description="parties the proposal adds: each must approve")
    quorum: int = Field(description="approvals needed from the base version's parties")
    approvals: list[ApprovalOut]
    document: dict[str, Any]
    base_document: dict[str, Any]


class RestrictionIn(BaseModel):
    """A party narrows the agreement at once: suspends it, or excludes offences it will not
    send to one partner (`from` is the caller's own agency)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["suspend", "exclude"] = Field(examples=["suspend"])
    to: str | None = Field(
        default=None, pattern=AGENCY_ID, description="exclude: the partner", examples=["KR-KCS"]
    )
    offences: list[Offence] | None = Field(
        default=None, min_length=1, description="exclude: the offences", examples=[["nps"]]
    )
    reason: str = Field(
        min_length=1, max_length=500, examples=["Domestic review of NPS scheduling"]
    )


class RestrictionOut(BaseModel):
    agreement: AgreementOut
    action: Literal["suspend", "exclude"]
