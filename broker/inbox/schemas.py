"""API shapes for inbox polling and acknowledgements."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class InboxItem(BaseModel):
    seq: int = Field(description="this inbox's sequence number; follow `next_cursor`")
    mid: uuid.UUID
    sender: str
    kind: str
    envelope: str = Field(description="the envelope exactly as the sender submitted it")
    receipt: str = Field(description="the broker's signed receipt for it")
    envelope_sha256: str
    received_at: datetime
    log_index: int | None
    ahead: bool = Field(
        default=False,
        description=(
            "an urgent item served ahead of inbox order: do not move your cursor to its `seq` "
            "(follow `next_cursor`); it comes again, already fetched, when the cursor reaches it"
        ),
    )


class InboxPage(BaseModel):
    items: list[InboxItem]
    next_cursor: str = Field(
        description="pass as `after` to continue; never skips a delivery", examples=["42"]
    )
    more: bool = Field(
        description=(
            "another item is waiting after this page (it was cut by `limit` or by the page's "
            "byte budget): ask again at once, without `wait`"
        ),
        examples=[True],
    )


EXAMPLE_ACK = "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoi...In0.eyJ2IjoxLCJtaWQiOi...fQ.c2ln"


class AckIn(BaseModel):
    """A JWS `ack+jws` signed with one of the recipient agency's signing keys."""

    model_config = ConfigDict(extra="forbid")

    ack: str = Field(examples=[EXAMPLE_ACK])


class AckOut(BaseModel):
    mid: uuid.UUID
    recipient: str
    status: str
    reason: str | None
    acked_at: datetime
    ack_sha256: str
