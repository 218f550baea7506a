"""API shapes for principals and tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.auth.service import Role

EXAMPLE_PRINCIPALS: dict[str, dict[str, Any]] = {
    "agency": {"name": "hk-ced-inbox", "role": "agency", "agency_id": "HK-CED"},
    "focal point": {
        "name": "vn-gdc-fp-hcm-01",
        "role": "focal_point",
        "focal_point_id": "VN-GDC/fp-hcm-01",
        "ttl_days": 90,
    },
    "registrar": {"name": "vn-gdc-registrar", "role": "registrar", "agency_id": "VN-GDC"},
    "auditor": {
        "name": "oversight-board",
        "role": "auditor",
        "audit_agencies": ["VN-GDC", "HK-CED"],
    },
}


class PrincipalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,60}$", examples=["hk-ced-inbox"])
    role: Role = Field(examples=["agency"])
    agency_id: str | None = Field(default=None, examples=["HK-CED"])
    focal_point_id: str | None = Field(default=None, examples=[None])
    audit_agencies: list[str] | None = Field(default=None, description="auditor only; null = all")
    ttl_days: int | None = Field(default=None, ge=1, le=730)


class PrincipalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    role: str
    agency_id: str | None
    focal_point_id: str | None
    audit_agencies: list[str] | None
    status: str


class TokenOut(BaseModel):
    """A new token: `token` is shown this once and never again."""

    id: uuid.UUID
    principal: str
    prefix: str
    expires_at: datetime
    token: str = Field(examples=["brk_3q2...(43 chars)"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_days: int | None = Field(default=None, ge=1, le=730, examples=[30])


class Me(BaseModel):
    name: str
    role: str
    agency_id: str | None
    focal_point_id: str | None
    audit_agencies: list[str] | None
