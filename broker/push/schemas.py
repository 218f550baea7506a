"""API shapes for push endpoints and the redeliver command."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PushEndpointIn(BaseModel):
    """Where to POST an agency's deliveries; https outside development."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8, max_length=2000, examples=["https://alerts.customs.gov.hk/broker/push"]
    )
    enabled: bool = Field(default=True, examples=[True])


class PushEndpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    agency_id: str
    url: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class Redelivery(BaseModel):
    """What `redeliver` did for one delivery."""

    mid: uuid.UUID
    sender: str
    recipient: str
    action: Literal["queued", "rearmed", "scheduled"]
