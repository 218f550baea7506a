"""API shapes for the key directory."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from broker.agencies.schemas import AGENCY_ID, FOCAL_POINT_ID

EXAMPLE_SIG_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    "use": "sig",
    "alg": "Ed25519",
}


EXAMPLE_ENC_JWK = {
    "kty": "OKP",
    "crv": "X25519",
    "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo",
    "use": "enc",
    "alg": "ECDH-ES+A256KW",
}
EXAMPLE_KEYS: dict[str, dict[str, Any]] = {
    "signing": {
        "agency_id": "VN-GDC",
        "focal_point_id": "VN-GDC/fp-hcm-01",
        "jwk": EXAMPLE_SIG_JWK,
        "not_after": "2027-06-30T00:00:00Z",
    },
    "encryption": {"agency_id": "HK-CED", "jwk": EXAMPLE_ENC_JWK},
}
EXAMPLE_REVOCATIONS: dict[str, dict[str, Any]] = {
    "superseded": {"reason": "superseded"},
    "key_compromise": {"reason": "key_compromise", "compromised_since": "2026-11-02T08:00:00Z"},
}


class KeyIn(BaseModel):
    """A public key to register: signing keys belong to a focal point, encryption keys to an agency."""

    model_config = ConfigDict(extra="forbid")

    agency_id: str = Field(pattern=AGENCY_ID, examples=["VN-GDC"])
    focal_point_id: str | None = Field(
        default=None, pattern=FOCAL_POINT_ID, examples=["VN-GDC/fp-hcm-01"]
    )
    jwk: dict[str, Any] = Field(examples=[EXAMPLE_SIG_JWK])
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jwk: dict[str, Any] = Field(examples=[EXAMPLE_SIG_JWK])
    not_after: AwareDatetime | None = None


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Literal["superseded", "key_compromise"] = Field(examples=["key_compromise"])
    compromised_since: AwareDatetime | None = Field(
        default=None,
        description="Required for key_compromise: the earliest time the key may have leaked",
    )


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kid: str
    agency_id: str
    focal_point_id: str | None
    use: str
    jwk: dict[str, Any]
    not_before: datetime
    not_after: datetime
    status: str
    retired_at: datetime | None
    revoked_at: datetime | None
    revocation_reason: str | None
    compromised_since: datetime | None


class JWKSet(BaseModel):
    """RFC 7517 JWK Set; each key carries directory metadata members that libraries ignore."""

    keys: list[dict[str, Any]]


# A real directory (one key, version 7) signed by a throwaway example key, not the broker's.
EXAMPLE_DIRECTORY_JWS = (
    "eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoiMUlHMnRNSDdKMndiSlpuT2Y4TEp6UWl0S2Y3TE12b0FFbHN1RE1WTTU0WSIs"
    "InR5cCI6ImtleS1kaXJlY3RvcnkrandzIn0.eyJ2IjoxLCJ2ZXJzaW9uIjo3LCJpc3N1ZWRfYXQiOjE3NjUxMzc2MDAs"
    "ImV4cGlyZXNfYXQiOjE3NjUyMjQwMDAsImtleXMiOlt7Imt0eSI6Ik9LUCIsImNydiI6IkVkMjU1MTkiLCJ4IjoiMTFx"
    "WUFZS3hDcmZWU183VHlXUUhPZzdoY3ZQYXBpTWxyd0lhYVBjSFVSbyIsInVzZSI6InNpZyIsImFsZyI6IkVkMjU1MTki"
    "LCJraWQiOiJrUHJLX3FteFZXYVlWQTl3d0JGNkl1bzN2Vnp6N1R4SENUd1hCeWdyUzRrIiwiYWdlbmN5IjoiVk4tR0RD"
    "Iiwic3RhdHVzIjoiYWN0aXZlIiwibmJmIjoxNzY0NTQ3MjAwLCJleHAiOjE3OTYwODMyMDAsImZvY2FsX3BvaW50Ijoi"
    "Vk4tR0RDL2ZwLWhjbS0wMSJ9XSwicHJldmlvdXNfc2hhMjU2IjoiOHJuOUd3YVltS3RUT19Sa1ZYUVY0RFljZjBZYTRE"
    "YVlKdDJ1Z1M2YTVnSSJ9.qd2GLIw3C-X6Ivqb1t7X3ukDxUP5oS25Q_t5EkP-TVz9ETq1iC6bR_gbZlXje6r1sGWVBYoC"
    "5mCOhH1PiEaRBQ"
)


class SignedDirectory(BaseModel):
    """The key directory as a compact JWS (`typ: key-directory+jws`) by the broker's receipt key.

    Its payload is `{"v": 1, "version", "issued_at", "expires_at", "keys", "previous_sha256"}`:
    `keys` are the JWK Set's keys with their metadata members, `version` only grows, times are
    Unix seconds, and `previous_sha256` is the base64url SHA-256 of the previous version's JWS
    (null for the first). The same version is served byte for byte to every caller.
    """

    directory: str = Field(
        pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
        examples=[EXAMPLE_DIRECTORY_JWS],
    )
