"""API shapes of recalls and of the recipients' compliance."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_RECALL = (
    "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoi...IiwidHlwIjoicmVjYWxsK2p3cyJ9.eyJ2IjoxLCJyaWQiOi...fQ.c2ln"
)
EXAMPLE_COMPLIANCE = "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoi...In0.eyJ2IjoxLCJyaWQiOi...fQ.c2ln"


class RecallIn(BaseModel):
    """A JWS `recall+jws` signed with the calling focal point's signing key."""

    model_config = ConfigDict(extra="forbid")

    recall: str = Field(min_length=1, max_length=8192, examples=[EXAMPLE_RECALL])


class RecallRecipientOut(BaseModel):
    recipient: str
    outcome: Literal["withdrawn", "notified"] = Field(
        description="`withdrawn`: never fetched, now never served; `notified`: it held a copy "
        "and is sent the recall notice, which it must answer by `deadline_at`"
    )
    compliance: Literal["erased", "retained"] | None
    legal_ground: str | None
    complied_at: datetime | None
    overdue: bool = Field(description="notified, no answer, and the deadline has passed")


class RecallOut(BaseModel):
    mid: uuid.UUID
    rid: uuid.UUID
    sender: str
    reason: str
    legal_reference: str | None
    recalled_at: datetime
    deadline_at: datetime
    recall_sha256: str
    recipients: list[RecallRecipientOut]


class ComplianceIn(BaseModel):
    """A JWS `recall-compliance+jws` signed with one of the recipient agency's signing keys."""

    model_config = ConfigDict(extra="forbid")

    compliance: str = Field(min_length=1, max_length=8192, examples=[EXAMPLE_COMPLIANCE])


class ComplianceOut(BaseModel):
    mid: uuid.UUID
    rid: uuid.UUID
    recipient: str
    compliance: Literal["erased", "retained"]
    legal_ground: str | None
    complied_at: datetime
    late: bool = Field(description="answered after the recall's deadline")
