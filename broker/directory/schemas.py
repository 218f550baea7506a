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
