"""API shapes of legal holds."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from broker.agencies.schemas import AGENCY_ID

REASON = "Preservation for MLA request 2026/114 (Hai Phong court)"
REFERENCE = "MLA-2026-114"


class HoldIn(BaseModel):
    """Keep one message past its agreement's retention until the hold is lifted."""

    model_config = ConfigDict(extra="forbid")

    sender: str = Field(pattern=AGENCY_ID, examples=["VN-GDC"])
    mid: uuid.UUID = Field(examples=["01938f6e-7b7c-7c3e-9a51-5f0c2b1d4e8a"])
    reason: str = Field(min_length=1, max_length=200, examples=[REASON])
    reference: str = Field(
        min_length=1,
        max_length=120,
        description="The legal reference: a court order, request or case number",
        examples=[REFERENCE],
    )


class HoldLiftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=200, examples=["Proceedings closed"])


class HoldOut(BaseModel):
    id: uuid.UUID
    sender: str
    mid: uuid.UUID
    reason: str
    reference: str
    placed_by: str
    placed_at: datetime
    lifted_by: str | None
    lifted_at: datetime | None
    lift_reason: str | None
    active: bool


class HoldsPage(BaseModel):
    items: list[HoldOut]
