"""API shapes of the transparency log and the auditor's queries (hashes in padded base64)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.ids import AGENCY_ID

B64_HASH = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="


class InclusionProofOut(BaseModel):
    """RFC 9162 inclusion proof, with the field names of transparency-dev's test data."""

    leafIdx: int = Field(examples=[1042])
    treeSize: int = Field(examples=[1043])
    leafHash: str = Field(examples=[B64_HASH])
    root: str = Field(examples=[B64_HASH])
    proof: list[str] = Field(examples=[[B64_HASH]])


class ConsistencyProofOut(BaseModel):
    """RFC 9162 consistency proof, with the field names of transparency-dev's test data."""

    size1: int = Field(examples=[900])
    size2: int = Field(examples=[1043])
    root1: str = Field(examples=[B64_HASH])
    root2: str = Field(examples=[B64_HASH])
    proof: list[str] = Field(examples=[[B64_HASH]])


class LeafOut(BaseModel):
    """One leaf: its index, its stored bytes and its stored leaf hash."""

    index: int = Field(examples=[1042])
    leaf: str = Field(description="base64 of the leaf bytes (JCS JSON)", examples=["eyJ2IjoxfQ=="])
    hash: str = Field(description="base64 of SHA-256(0x00 ‖ leaf)", examples=[B64_HASH])


class LeavesPage(BaseModel):
    """Leaves the caller may read in an index range, in index order."""

    tree_size: int = Field(description="size of the latest checkpoint", examples=[1043])
    start: int = Field(examples=[0])
    leaves: list[LeafOut]
    next: int | None = Field(
        description="`start` of the next page; null when the range is exhausted", examples=[1000]
    )


class NodesPage(BaseModel):
    """Stored hashes of perfect subtrees of one level: node i covers leaves [i·2^level, (i+1)·2^level)."""

    tree_size: int = Field(examples=[1043])
    level: int = Field(examples=[0])
    start: int = Field(examples=[0])
    hashes: list[str] = Field(examples=[[B64_HASH]])


class EventOut(BaseModel):
    """An audit event: metadata only."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str = Field(examples=["msg.accepted"])
    actor: str = Field(examples=["focal_point:vn-gdc-hcm"])
    subject: str | None = Field(examples=["VN-GDC"])
    details: dict[str, Any] = Field(
        examples=[{"sender": "VN-GDC", "recipients": ["HK-CED"], "offence": "cites_wildlife"}]
    )
    created_at: datetime
    leaf_index: int | None = Field(description="null until the sequencer includes it")


class EventsPage(BaseModel):
    """A page of events; follow `next_cursor` until it is null."""

    items: list[EventOut]
    next_cursor: str | None = Field(examples=["01a209e8-cf03-74d1-ac62-45eda8e12c83"])


class VolumeRow(BaseModel):
    """Accepted messages in one direction (sender to one recipient) for one offence."""

    sender: str = Field(examples=["VN-GDC"])
    recipient: str = Field(examples=["HK-CED"])
    offence: str = Field(examples=["cites_wildlife"])
    count: int = Field(examples=[12])


class ReasonCount(BaseModel):
    """Rejections with one reason code."""

    reason: str = Field(examples=["scope.offence_not_covered"])
    count: int = Field(examples=[3])


class Delays(BaseModel):
    """Delays in milliseconds (nearest-rank percentiles)."""

    count: int
    min: int
    p50: int
    p90: int
    p99: int
    max: int


class AckStats(BaseModel):
    """Acknowledgements of the period's accepted messages."""

    count: int = Field(examples=[10])
    by_status: dict[str, int] = Field(examples=[{"decrypted": 9, "rejected": 1}])
    delay_ms: Delays | None


class Summary(BaseModel):
    """What moved under an agreement (or everywhere the auditor oversees) in a period."""

    agreement: str | None = Field(examples=["VN-HK-CMAA-2013"])
    since: datetime | None
    until: datetime | None
    accepted: int = Field(examples=[12])
    volume: list[VolumeRow]
    rejected: int = Field(examples=[3])
    rejections: list[ReasonCount]
    delivery_delay_ms: Delays | None = Field(
        description="from acceptance to availability in the recipient's inbox"
    )
    acknowledgements: AckStats


# --- witnesses ------------------------------------------------------------------------------

EXAMPLE_WITNESS_VKEY = (
    "hk-ced.example/witness+0f9dc3a7+BEr8cKbomQTwyO1C9suHN1J3yDhvY5OcSh/81FyEPLp7"
)
EXAMPLE_COSIGNED = (
    "broker.example.int/exchange-log/v1\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n"
    "— broker.example.int/exchange-log/v1 rirATVGfL1y1+gCoC81S1rnFiK8Xf/o7uN8Z5wqWyGtHeEzg77wQu"
    "Gp4cw5Uft1CDgVgIART0+ZQuaG/fq6ekeeu1Qk=\n"
    "— hk-ced.example/witness D53DpwAAAABpM8NAeVx6m7frOsnOOlAvutk9JOBEiI06mpeqtHfUxoHLJy4e4+Je5y5"
    "j1f08aBq8Lq7gvWH0FV5obKFNgcS2SNQEDg==\n"
)
EXAMPLE_WITNESS = "hk-ced.example/witness"


class WitnessIn(BaseModel):
    """A witness to register: its cosigner verifier key and the agency that runs it."""

    model_config = ConfigDict(extra="forbid")

    vkey: str = Field(
        min_length=1,
        max_length=200,
        description="cosignature/v1 verifier key `<name>+<key id>+<base64(0x04 ‖ key)>`, "
        "as `broker witness init` prints it",
        examples=[EXAMPLE_WITNESS_VKEY],
    )
    agency: str = Field(pattern=AGENCY_ID, examples=["HK-CED"])


class WitnessRef(BaseModel):
    """A registered witness, by name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=120, examples=[EXAMPLE_WITNESS])


class WitnessOut(BaseModel):
    """A registered witness; its cosignatures verify with `vkey`."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(
        description="the key name in its signature lines", examples=["hk-ced.example/witness"]
    )
    vkey: str = Field(examples=[EXAMPLE_WITNESS_VKEY])
    agency: str = Field(validation_alias="agency_id", examples=["HK-CED"])
    status: Literal["active", "retired"] = Field(examples=["active"])
    created_at: datetime


class CosignatureIn(BaseModel):
    """A checkpoint exactly as the log signed it, with the witness's cosignature line added."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(
        min_length=1,
        max_length=16_384,
        description="the signed checkpoint note carrying the witness's cosignature line",
        examples=[EXAMPLE_COSIGNED],
    )


class CosignatureOut(BaseModel):
    """One witness's cosignature as stored (the newest it sent for that checkpoint)."""

    model_config = ConfigDict(from_attributes=True)

    size: int = Field(examples=[8])
    witness: str = Field(examples=["hk-ced.example/witness"])
    timestamp: int = Field(description="POSIX seconds, as signed", examples=[1765000000])
    line: str = Field(
        examples=[
            "— hk-ced.example/witness D53DpwAAAABpM8NAeVx6m7frOsnOOlAvutk9JOBEiI06mpeqtHfUxoHLJy4e4"
            "+Je5y5j1f08aBq8Lq7gvWH0FV5obKFNgcS2SNQEDg=="
        ]
    )


class CosignaturesOut(BaseModel):
    """What the broker stored from one submission: a line per witness of the caller's agency."""

    cosignatures: list[CosignatureOut]
