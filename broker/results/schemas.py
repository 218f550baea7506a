"""API shapes for operation results."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.agencies.schemas import AGENCY_ID

EXAMPLE_RESULTS: dict[str, Any] = {
    "operation": "MEKONG-DRAGON-V",
    "title": "Mekong Dragon V (phase window)",
    "agreement": "MEKONG-DRAGON",
    "coordinator": "VN-GDC",
    "starts_at": "2026-01-01T00:00:00Z",
    "ends_at": "2027-12-31T00:00:00Z",
    "phases": [
        {
            "name": "p2-targeting",
            "title": "Phase 2: joint targeting of consignments",
            "starts_at": "2026-07-01T00:00:00Z",
            "ends_at": "2027-01-01T00:00:00Z",
        }
    ],
    "phase": "p2-targeting",
    "agencies": None,
    "total": 3,
    "groups": [
        {
            "phase": "p2-targeting",
            "week": "2026-W49",
            "agency": "HK-CED",
            "outcome": "seized",
            "commodity": "narcotics",
            "quantity_band": "10_100kg",
            "count": 2,
        },
        {
            "phase": "p2-targeting",
            "week": "2026-W50",
            "agency": "CN-GACC",
            "outcome": "no_find",
            "commodity": None,
            "quantity_band": None,
            "count": 1,
        },
    ],
    "by_phase": [{"value": "p2-targeting", "count": 3}],
    "by_week": [{"value": "2026-W49", "count": 2}, {"value": "2026-W50", "count": 1}],
    "by_agency": [{"value": "CN-GACC", "count": 1}, {"value": "HK-CED", "count": 2}],
    "by_outcome": [{"value": "no_find", "count": 1}, {"value": "seized", "count": 2}],
    "by_commodity": [{"value": None, "count": 1}, {"value": "narcotics", "count": 2}],
    "by_quantity_band": [{"value": None, "count": 1}, {"value": "10_100kg", "count": 2}],
}

EXAMPLE_FEEDBACK_PAGE: dict[str, Any] = {
    "operation": "MEKONG-DRAGON-V",
    "total": 2,
    "items": [
        {
            "mid": "019af9a4-5c00-7b2d-8e3f-6c9a5b2d3e4f",
            "sender": "HK-CED",
            "recipient": "VN-GDC",
            "in_reply_to": "019af9a0-1800-7a1c-9d2e-5b8f4a1c2d3e",
            "accepted_at": "2026-12-07T09:30:00.123456Z",
            "phase": "p2-targeting",
            "week": "2026-W50",
            "outcome": "seized",
            "commodity": "narcotics",
            "quantity_band": "10_100kg",
            "event_id": "019af9a4-5c01-7000-8000-3b1c2d3e4f50",
            "leaf_index": 1042,
        }
    ],
    "next_cursor": "2026-12-07T09:30:00.123456Z~019af9a4-5c02-7000-8000-000000000001",
}


class PhaseOut(BaseModel):
    """A phase of the operation: feedback accepted in [starts_at, ends_at) counts in it."""

    name: str
    title: str | None = None
    starts_at: datetime
    ends_at: datetime


class GroupOut(BaseModel):
    """How many feedback messages share these values. `phase` null: outside every phase;
    `commodity`, `quantity_band` null: the feedback gave none."""

    phase: str | None
    week: str = Field(description="ISO 8601 week (UTC) of the broker's acceptance time")
    agency: str = Field(pattern=AGENCY_ID, description="The agency that sent the feedback")
    outcome: str
    commodity: str | None
    quantity_band: str | None
    count: int


class Rollup(BaseModel):
    """The count for one value of one dimension."""

    value: str | None
    count: int


class ResultsOut(BaseModel):
    """An operation's feedback rolled up: the grouped counts and each dimension's totals."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_RESULTS]})

    operation: str
    title: str
    agreement: str
    coordinator: str | None
    starts_at: datetime
    ends_at: datetime
    phases: list[PhaseOut]
    phase: str | None = Field(
        description="The phase the figures are limited to (`outside` for none), or null for all"
    )
    agencies: list[str] | None = Field(
        description="An auditor's figures count the feedback sent by or to these agencies "
        "only; null: every agency's"
    )
    total: int
    groups: list[GroupOut]
    by_phase: list[Rollup]
    by_week: list[Rollup]
    by_agency: list[Rollup]
    by_outcome: list[Rollup]
    by_commodity: list[Rollup]
    by_quantity_band: list[Rollup]


class FeedbackOut(BaseModel):
    """One feedback message behind a figure, and the log leaf of its `msg.accepted` event."""

    mid: uuid.UUID
    sender: str
    recipient: str = Field(description="The agency that sent the alert answered")
    in_reply_to: uuid.UUID
    accepted_at: datetime
    phase: str | None
    week: str
    outcome: str
    commodity: str | None
    quantity_band: str | None
    event_id: uuid.UUID
    leaf_index: int | None = Field(
        description="The leaf of the `msg.accepted` event; null until the log sequences it"
    )


class FeedbackPage(BaseModel):
    """The feedback behind one figure, oldest first, a page at a time."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_FEEDBACK_PAGE]})

    operation: str
    total: int = Field(description="How many feedback messages the figure counts")
    items: list[FeedbackOut]
    next_cursor: str | None
