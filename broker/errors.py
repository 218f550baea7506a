"""Domain errors carry their HTTP status and a stable code; one handler renders RFC 9457."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field

from broker.crypto.errors import CryptoError

T = TypeVar("T")


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


# The HTTP boundary: every stable code the API answers with, its status and its title. A
# domain error names only its code; crypto errors (which the agency side shares) likewise.
PROBLEMS: dict[str, tuple[int, str]] = {
    "ack.conflict": (409, "A different final acknowledgement was already recorded"),
    "ack.invalid": (422, "Invalid acknowledgement"),
    "ack.key_not_recipient": (422, "Acknowledgement not signed by the recipient agency"),
    "audit.bad_cursor": (422, "Bad cursor"),
    "audit.bad_filter": (422, "Bad filter"),
    "audit.not_overseen": (403, "Agency not overseen by this auditor"),
    "auth.forbidden": (403, "Not permitted for this role"),
    "auth.sender_mismatch": (403, "Authenticated focal point is not the signer"),
    "auth.token_expired": (401, "Token expired"),
    "auth.token_revoked": (401, "Token revoked"),
    "auth.unauthenticated": (401, "Authentication required"),
    "broker.error": (400, "Request refused"),
    "console.cross_site": (403, "Cross-site request refused"),
    "console.form_token": (403, "Form token missing or wrong"),
    "console.no_such_agreement": (404, "No such agreement"),
    "console.no_such_message": (404, "No such message"),
    "console.session_ended": (401, "Console session ended"),
    "console.session_expired": (401, "Console session expired"),
    "envelope.alg_not_allowed": (400, "Envelope refused"),
    "envelope.bad_exp": (422, "Bad expiry"),
    "envelope.bad_kid": (400, "Envelope refused"),
    "envelope.bad_payload": (422, "Envelope refused"),
    "envelope.bad_routing": (422, "Invalid routing header"),
    "envelope.bad_signature": (422, "Envelope refused"),
    "envelope.decrypt_failed": (422, "Envelope refused"),
    "envelope.duplicate_key": (400, "Envelope refused"),
    "envelope.header_forbidden": (400, "Envelope refused"),
    "envelope.header_unknown": (400, "Envelope refused"),
    "envelope.iat_too_late": (422, "Envelope refused"),
    "envelope.invalid": (400, "Envelope refused"),
    "envelope.jwe_recipients_mismatch": (422, "Envelope refused"),
    "envelope.jwe_structure": (400, "Envelope refused"),
    "envelope.kid_mismatch": (422, "Envelope refused"),
    "envelope.low_order_epk": (400, "Envelope refused"),
    "envelope.malformed": (400, "Envelope refused"),
    "envelope.not_addressed_to_us": (422, "Envelope refused"),
    "envelope.not_i_json": (400, "Envelope refused"),
    "envelope.routing_mismatch": (422, "Envelope refused"),
    "envelope.sender_mismatch": (422, "Routing sender does not own the signing key"),
    "envelope.too_deep": (400, "Envelope refused"),
    "envelope.too_large": (413, "Envelope refused"),
    "envelope.typ_mismatch": (400, "Envelope refused"),
    "envelope.zip_forbidden": (400, "Envelope refused"),
    "http.400": (400, "Bad request"),
    "idempotency.in_flight": (409, "The same message is being accepted"),
    "idempotency.key_mismatch": (400, "Idempotency-Key must equal the mid"),
    "idempotency.missing": (400, "Idempotency-Key header required"),
    "inbox.bad_cursor": (400, "Bad cursor"),
    "key.bad_binding": (422, "Key bound to the wrong owner"),
    "key.bad_validity": (422, "Bad key validity window"),
    "key.compromised": (422, "Key refused"),
    "key.insecure_storage": (400, "Key refused"),
    "key.invalid": (422, "Invalid public key"),
    "key.kid_mismatch": (422, "Key id is not the key's thumbprint"),
    "key.low_order": (422, "Small-order public key"),
    "key.not_active": (409, "Key is not active"),
    "key.not_valid_at": (422, "Key refused"),
    "key.not_valid_now": (422, "Signing key outside its validity"),
    "key.private_material": (422, "Private key material sent as public"),
    "key.recipient_no_key": (422, "A recipient has no valid encryption key"),
    "key.retired": (422, "Signing key retired"),
    "key.revoked": (422, "Signing key revoked"),
    "key.unknown": (422, "Unknown signing key"),
    "key.unreadable": (400, "Key refused"),
    "key.weak_passphrase": (400, "Key refused"),
    "key.wrong_curve": (422, "Wrong key type or curve"),
    "key.wrong_use": (422, "Wrong key use or algorithm"),
    "log.corrupt": (500, "The stored log is damaged"),
    "log.inconsistent": (500, "The stored log is inconsistent"),
    "log.no_checkpoint": (404, "The log has no checkpoint yet"),
    "log.out_of_range": (422, "Outside the signed tree"),
    "push.bad_url": (422, "Push endpoint URL refused"),
    "push.destination_forbidden": (422, "Push destination not allowed"),
    "push.not_available": (409, "The delivery is not available yet"),
    "push.not_configured": (409, "The agency has no enabled push endpoint"),
    "rate.limited": (429, "Too many requests"),
    "registry.bad_validity": (422, "Bad validity period"),
    "registry.duplicate_id": (409, "Already exists"),
    "registry.focal_point_outside_agency": (422, "Focal point id does not belong to the agency"),
    "registry.id_mismatch": (422, "Document id does not match the path"),
    "registry.invalid_document": (422, "Invalid document"),
    "registry.not_a_party": (422, "Not a party to the agreement"),
    "registry.unknown_agency": (422, "Unknown agency"),
    "registry.unknown_agreement": (422, "Unknown agreement"),
    "registry.unknown_country": (422, "Unknown country code"),
    "registry.unknown_offence": (422, "Unknown offence code"),
    "registry.unknown_party": (422, "Unknown party"),
    "registry.unknown_subject_type": (422, "Unknown subject type"),
    "registry.validity_overlap": (409, "Overlapping validity"),
    "replay.iat_out_of_window": (422, "Issued-at outside the accepted window"),
    "replay.mid_reused": (422, "Message id reused with a different envelope"),
    "request.conflict": (409, "Conflict"),
    "request.invalid": (422, "Invalid request"),
    "request.malformed": (400, "Malformed request"),
    "request.method_not_allowed": (405, "Method not allowed"),
    "request.not_found": (404, "Not found"),
    "request.timeout": (408, "Request body not received in time"),
    "request.too_large": (413, "Request too large"),
    "request.unsupported_media_type": (415, "Unsupported media type"),
    "scope.agreement_not_in_force": (403, "Outside the agreement's scope"),
    "scope.agreement_suspended": (403, "Outside the agreement's scope"),
    "scope.agreement_unknown": (403, "Outside the agreement's scope"),
    "scope.direction_excluded": (403, "Outside the agreement's scope"),
    "scope.feedback_not_recipient": (403, "Feedback from an agency that did not receive the alert"),
    "scope.feedback_other_agreement": (403, "Feedback under another agreement"),
    "scope.feedback_unknown_alert": (403, "Feedback on an unknown alert"),
    "scope.feedback_wrong_recipient": (403, "Feedback goes back to the alert's sender only"),
    "scope.focal_point_inactive": (403, "Outside the agreement's scope"),
    "scope.focal_point_not_designated": (403, "Outside the agreement's scope"),
    "scope.handling_above_agreement": (403, "Outside the agreement's scope"),
    "scope.offence_not_covered": (403, "Outside the agreement's scope"),
    "scope.operation_not_member": (403, "Outside the agreement's scope"),
    "scope.operation_other_agreement": (403, "Outside the agreement's scope"),
    "scope.operation_outside_window": (403, "Outside the agreement's scope"),
    "scope.operation_suspended": (403, "Outside the agreement's scope"),
    "scope.operation_unknown": (403, "Outside the agreement's scope"),
    "scope.recipient_not_party": (403, "Outside the agreement's scope"),
    "scope.red_multilateral": (403, "Outside the agreement's scope"),
    "scope.subject_type_not_covered": (403, "Outside the agreement's scope"),
    "service.internal": (500, "Internal error"),
    "service.unavailable": (503, "Service unavailable"),
}


class BrokerError(Exception):
    """Base of every error the API reports: a stable `code`, its status and title in PROBLEMS.

    A subclass declares its code (`class NotFound(BrokerError, code="request.not_found")`); a
    family whose code varies per refusal (scope decisions, crypto refusals) passes `code=` when
    raising. An unknown code fails at import or at raise.
    """

    code: ClassVar[str] = "broker.error"
    status_code: int = 400
    title: str = "Request refused"

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        cls.status_code, cls.title = PROBLEMS[cls.code]

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code  # type: ignore[misc]  # a per-refusal code of a family
            self.status_code, self.title = PROBLEMS[code]
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


def exists(found: T | None, what: str) -> T:
    """`found`, or NotFound naming `what` ("key 'abc'") when the look-up found nothing."""
    if found is None:
        raise NotFound(f"no {what}")
    return found


class Refused(BrokerError):
    """A crypto refusal (an envelope, token or key) reported with the crypto error's code."""

    def __init__(self, exc: CryptoError, *, errors: list[FieldProblem] | None = None) -> None:
        super().__init__(exc.detail, code=exc.code, errors=errors)


class OutOfScope(BrokerError):
    """A scope decision's refusal, with its `scope.*` code (`agreements.policy`)."""

    code = "scope.direction_excluded"  # the documented example; each refusal passes its own


# Generic errors used across domains.
class NotFound(BrokerError, code="request.not_found"): ...


class MethodNotAllowed(BrokerError, code="request.method_not_allowed"): ...


class InvalidRequest(BrokerError, code="request.invalid"): ...


class MalformedRequest(BrokerError, code="request.malformed"): ...


class PayloadTooLarge(BrokerError, code="request.too_large"): ...


class RequestTimeout(BrokerError, code="request.timeout"): ...


class UnsupportedMediaType(BrokerError, code="request.unsupported_media_type"): ...


class Unauthenticated(BrokerError, code="auth.unauthenticated"): ...


class TokenExpired(BrokerError, code="auth.token_expired"): ...


class TokenRevoked(BrokerError, code="auth.token_revoked"): ...


class Forbidden(BrokerError, code="auth.forbidden"): ...


class Conflict(BrokerError, code="request.conflict"): ...


class Unavailable(BrokerError, code="service.unavailable"): ...


class InternalError(BrokerError, code="service.internal"): ...


class RateLimited(BrokerError, code="rate.limited"): ...


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


def error_responses(
    *errors: type[BrokerError] | type[CryptoError] | str,
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: each status with the problem schema and codes."""
    by_status: dict[int, list[str]] = {}
    for err in (*COMMON_ERRORS, *errors):
        code = err if isinstance(err, str) else err.code
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    return {
        status: {
            "model": Problem,
            "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
            "description": "Problem: " + ", ".join(sorted(set(codes))),
        }
        for status, codes in sorted(by_status.items())
    }


# Registry errors shared by several domains.
class DuplicateId(BrokerError, code="registry.duplicate_id"): ...


class UnknownAgency(BrokerError, code="registry.unknown_agency"): ...
