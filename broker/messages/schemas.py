"""API shapes for submission, scope checks and message status."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.recalls.schemas import RecallOut

EXAMPLE_ROUTING: dict[str, Any] = {
    "v": 1,
    "kind": "alert",
    "mid": "019ab0a2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",
    "iat": 1795000000,
    "exp": 1795604800,
    "sender": "VN-GDC",
    "sender_fp": "VN-GDC/fp-hcm-01",
    "recipients": ["HK-CED"],
    "agreement": "VN-HK-CMAA-2013",
    "operation": None,
    "offence": "cites_wildlife",
    "subject_types": ["route", "shipment"],
    "priority": "urgent",
    "handling": "TLP:AMBER",
}


# The shape of an acknowledgement (abridged): JWS `ack+jws` over the ack.json payload.
EXAMPLE_ACK = "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoi...In0.eyJ2IjoxLCJtaWQiOi...fQ.c2ln"

# The shape of an envelope (abridged): outer JWS over {routing, jwe}, see PROTOCOL.md.
EXAMPLE_ENVELOPE = "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoi...In0.eyJyb3V0aW5nIjp7...fX0.c2lnbmF0dXJl"


class SubmitIn(BaseModel):
    """A compact JWS (`typ: alert-envelope+jws`) built by the SDK: sign, encrypt, sign."""

    model_config = ConfigDict(extra="forbid")

    envelope: str = Field(
        min_length=10,
        examples=[EXAMPLE_ENVELOPE],
    )


class Receipt(BaseModel):
    """The broker's signed promise to deliver and to log (PROTOCOL.md section 7 and note)."""

    mid: uuid.UUID
    receipt: str = Field(
        description="JWS `broker-receipt+jws` signed with the broker's receipt key"
    )
    envelope_sha256: str
    accepted_at: datetime
    event_id: uuid.UUID
    log_index: int | None = Field(description="set once the log sequencer has included the event")


class CheckIn(BaseModel):
    """A routing header to dry-run against the scope rules before encrypting."""

    model_config = ConfigDict(extra="forbid")

    routing: dict[str, Any] = Field(examples=[EXAMPLE_ROUTING])


class CheckOut(BaseModel):
    decision: str = Field(examples=["reject"])
    code: str | None = Field(default=None, examples=["scope.direction_excluded"])
    detail: str | None = None
    policy_sha256: str | None = None
    recipient_keys: dict[str, str] = Field(
        default_factory=dict, description="the encryption key (kid) to use for each recipient"
    )


class OverdueItem(BaseModel):
    """A copy of ours not acknowledged by its deadline."""

    mid: uuid.UUID
    recipient: str
    agreement: str
    priority: str
    received_at: datetime
    due_at: datetime = Field(description="acceptance + the agreement's deadline for its priority")


class OverduePage(BaseModel):
    items: list[OverdueItem] = Field(
        description="urgent alerts first, then the longest overdue; at most `limit`"
    )


class DeliveryStatus(BaseModel):
    recipient: str
    state: str = Field(
        description=(
            "queued, available, fetched, acknowledged, or expired: withdrawn unread because "
            "the message's exp passed before the recipient fetched it"
        ),
        examples=["acknowledged"],
    )
    available_at: datetime | None
    fetched_at: datetime | None
    acked_at: datetime | None
    expired_at: datetime | None = Field(
        default=None, description="when the broker withdrew the unread copy (state expired)"
    )
    ack_status: str | None
    ack_reason: str | None
    overdue: bool = Field(description="not acknowledged within the agreement's ack_deadline")
    ack: str | None = Field(
        default=None,
        description=(
            "the recipient's signed acknowledgement (`ack+jws`, the latest it sent), exactly as "
            "it sent it: verify it with a signing key of the recipient from the directory"
        ),
        examples=[EXAMPLE_ACK],
    )
    ack_sha256: str | None = Field(
        default=None, description="SHA-256 (base64url) of `ack`; the log's msg.acked names it"
    )
    ack_log_index: int | None = Field(
        default=None,
        description="leaf index of the msg.acked event recording `ack`; null until sequenced",
        examples=[1043],
    )
    ack_logged_at: datetime | None = Field(
        default=None, description="the `ts` of that leaf: when the log recorded `ack`"
    )
    ack_leaf: str | None = Field(
        default=None,
        description=(
            "base64 of that leaf's bytes (JCS JSON): prove them with an inclusion proof of "
            "`ack_log_index` against a signed checkpoint, then read its `ts` and `ack_sha256`"
        ),
        examples=["eyJ2IjoxfQ=="],
    )
    feedback: list[uuid.UUID] = Field(
        default_factory=list,
        description="mids of this recipient's feedback on this message addressed to the sender",
    )


class MessageStatus(BaseModel):
    mid: uuid.UUID
    kind: str
    sender: str
    sender_fp: str
    agreement: str
    operation: str | None
    offence: str
    received_at: datetime
    envelope_sha256: str
    log_index: int | None
    supersedes: uuid.UUID | None = Field(
        default=None, description="the earlier message of ours this one corrects"
    )
    superseded_by: uuid.UUID | None = Field(
        default=None,
        description="our correction of this message: recipients were sent it as superseding it",
    )
    recall: RecallOut | None = Field(
        default=None,
        description="our recall of this message, with each recipient's outcome and answer",
    )
    deliveries: list[DeliveryStatus]
