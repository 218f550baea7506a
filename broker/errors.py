"""Domain errors carry their HTTP status and a stable code; one handler renders RFC 9457."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from pydantic import BaseModel, Field


class FieldProblem(BaseModel):
    """One invalid field: a JSON Pointer into the request and what is wrong."""

    pointer: str = Field(examples=["/body/parties/1"])
    detail: str = Field(examples=["unknown agency 'XX-NOPE'"])


class Problem(BaseModel):
    """RFC 9457 problem details, with the broker's stable `code` and the request id."""

    type: str = Field(examples=["urn:exchange-broker:problem:registry.unknown_agency"])
    title: str = Field(examples=["Unknown agency"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["agreement party 'XX-NOPE' is not a registered agency"])
    code: str = Field(examples=["registry.unknown_agency"])
    instance: str | None = Field(default=None, examples=["/v1/admin/agreements"])
    request_id: str | None = Field(default=None)
    errors: list[FieldProblem] | None = None


class BrokerError(Exception):
    """Base of every error the API reports. Subclasses set `status_code` and `code`."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "broker.error"
    title: ClassVar[str] = "Request refused"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def problem(self, *, instance: str | None, request_id: str | None) -> Problem:
        return Problem(
            type=f"urn:exchange-broker:problem:{self.code}",
            title=self.title,
            status=self.status_code,
            detail=self.detail,
            code=self.code,
            instance=instance,
            request_id=request_id,
            errors=self.errors,
        )


@functools.cache
def error(code: str, status: int, title: str) -> type[BrokerError]:
    """The error class for a stable code (one class per code, so modules stay terse)."""
    name = "".join(part.title() for part in code.replace(".", "_").split("_")) + "Error"
    return type(name, (BrokerError,), {"code": code, "status_code": status, "title": title})


# Generic errors used across domains.
NotFound = error("request.not_found", 404, "Not found")
MethodNotAllowed = error("request.method_not_allowed", 405, "Method not allowed")
InvalidRequest = error("request.invalid", 422, "Invalid request")
MalformedRequest = error("request.malformed", 400, "Malformed request")
PayloadTooLarge = error("request.too_large", 413, "Request too large")
RequestTimeout = error("request.timeout", 408, "Request body not received in time")
UnsupportedMediaType = error("request.unsupported_media_type", 415, "Unsupported media type")
Unauthenticated = error("auth.unauthenticated", 401, "Authentication required")
TokenExpired = error("auth.token_expired", 401, "Token expired")
TokenRevoked = error("auth.token_revoked", 401, "Token revoked")
Forbidden = error("auth.forbidden", 403, "Not permitted for this role")
Conflict = error("request.conflict", 409, "Conflict")
Unavailable = error("service.unavailable", 503, "Service unavailable")
InternalError = error("service.internal", 500, "Internal error")
RateLimited = error("rate.limited", 429, "Too many requests")

# What any gated route may answer besides its own errors: the token check, the request
# parser (400 malformed JSON, 422 invalid fields), the body limits (408, 413), the rate
# limiter (429) and a database outage (503).
COMMON_ERRORS: tuple[type[BrokerError], ...] = (
    Unauthenticated,
    MalformedRequest,
    InvalidRequest,
    RequestTimeout,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
)
_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}


def error_responses(*errors: type[BrokerError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: each status with the problem schema and codes."""
    by_status: dict[int, list[str]] = {}
    for err in (*COMMON_ERRORS, *errors):
        by_status.setdefault(err.status_code, []).append(err.code)
    return {
        status: {
            "model": Problem,
            "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
            "description": "Problem: " + ", ".join(sorted(set(codes))),
        }
        for status, codes in sorted(by_status.items())
    }


# Registry errors shared by several domains.
DuplicateId = error("registry.duplicate_id", 409, "Already exists")
UnknownAgency = error("registry.unknown_agency", 422, "Unknown agency")
