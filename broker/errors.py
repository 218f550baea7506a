"""Domain errors carry their HTTP status and a stable code; one handler renders RFC 9457."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field

from broker.crypto import errors as crypto_errors
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
    "agreement.approval_invalid": (422, "Invalid agreement approval"),
    "agreement.approval_key_not_party": (422, "Approval not signed by the approving agency"),
    "agreement.not_party": (403, "Not a party to the agreement"),
    "agreement.proposal_expired": (410, "The proposal has expired"),
    "agreement.proposal_stale": (409, "The proposal can no longer take effect"),
    "audit.bad_cursor": (422, "Bad cursor"),
    "audit.bad_filter": (422, "Bad filter"),
    "audit.not_overseen": (403, "Agency not overseen by this auditor"),
    "auth.forbidden": (403, "Not permitted for this role"),
    "auth.foreign_agency": (403, "The object belongs to another agency"),
    "auth.principal_suspended": (403, "The principal's focal point or agency is suspended"),
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
    "correction.agreement_differs": (422, "A correction stays under the agreement"),
    "correction.already_superseded": (409, "The message was already corrected"),
    "correction.recipients_differ": (422, "A correction goes to the same recipients"),
    "correction.unknown_message": (422, "No such message of yours to correct"),
    "directory.bad_signature": (422, "Directory not signed by the pinned broker key"),
    "directory.bad_state": (422, "The kept directory state is unreadable"),
    "directory.fork": (422, "Two different directories under one version"),
    "directory.malformed": (422, "Not a key directory"),
    "directory.rollback": (422, "Directory older than one already seen"),
    "directory.stale": (422, "Directory past its expiry"),
    "directory.unsigned": (422, "Unsigned directory"),
    "directory.wrong_type": (422, "A token of another type offered as the directory"),
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
    "hold.lifted": (409, "The hold was already lifted"),
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
    "log.checkpoint_unknown": (404, "No checkpoint of that size"),
    "log.checkpoint_mismatch": (422, "Not the checkpoint the log signed"),
    "log.cosignature_invalid": (422, "The cosignature does not verify"),
    "log.cosignature_future": (422, "The cosignature's time is in the future"),
    "log.not_cosigned": (404, "No checkpoint has that many cosignatures"),
    "log.witness_unknown": (403, "Not an active witness of your agency"),
    "log.witness_key_invalid": (422, "Witness key refused"),
    "message.purged": (410, "Purged under the agreement's retention"),
    "push.bad_url": (422, "Push endpoint URL refused"),
    "push.destination_forbidden": (422, "Push destination not allowed"),
    "push.not_available": (409, "The delivery is not available yet"),
    "push.not_configured": (409, "The agency has no enabled push endpoint"),
    "rate.limited": (429, "Too many requests"),
    "recall.already_answered": (409, "The recall was already answered otherwise"),
    "recall.bad_compliance": (422, "Invalid answer to a recall"),
    "recall.compliance_key_not_recipient": (
        422,
        "The answer is not signed by a key of the recipient agency",
    ),
    "recall.invalid": (422, "Invalid recall"),
    "recall.key_not_signer": (422, "The recall is not signed by the calling focal point"),
    "recall.not_sender": (403, "Only the sending agency may recall a message"),
    "recall.rid_reused": (409, "The recall's id is already a message's id"),
    "registry.bad_validity": (422, "Bad validity period"),
    "registry.duplicate_id": (409, "Already exists"),
    "registry.focal_point_outside_agency": (422, "Focal point id does not belong to the agency"),
    "registry.id_mismatch": (422, "Document id does not match the path"),
    "registry.invalid_document": (422, "Invalid document"),
    "registry.not_a_party": (422, "Not a party to the agreement"),
    "registry.status_unchanged": (409, "Already in that state"),
    "registry.unknown_agency": (422, "Unknown agency"),
    "registry.unknown_agreement": (422, "Unknown agreement"),
    "registry.unknown_country": (422, "Unknown country code"),
    "registry.unknown_subdivision": (422, "Unknown ISO 3166-2 subdivision code"),
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
    "scope.audience_incomplete": (403, "Outside the agreement's scope"),
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
    "scope.sender_receive_only": (403, "Outside the agreement's scope"),
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
    # A family's code prefix: the API documents every code under it (`error_responses`).
    family: ClassVar[str | None] = None
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

    code = "scope.direction_excluded"  # each refusal passes its own
    family = "scope."


# Generic errors used across domains.
class NotFound(BrokerError, code="request.not_found"):
    """The resource named in the path does not exist (or is not yours to see)."""


class MethodNotAllowed(BrokerError, code="request.method_not_allowed"):
    """The path exists but not with this method."""


class InvalidRequest(BrokerError, code="request.invalid"):
    """Fields of the request are invalid; `errors` points at each one."""


class MalformedRequest(BrokerError, code="request.malformed"):
    """The body is not JSON (or has a member name twice); `errors` says where."""


class PayloadTooLarge(BrokerError, code="request.too_large"):
    """The body is larger than the broker accepts."""


class RequestTimeout(BrokerError, code="request.timeout"):
    """The body did not arrive in time."""


class UnsupportedMediaType(BrokerError, code="request.unsupported_media_type"):
    """The body's media type is not one the route reads."""


class Unauthenticated(BrokerError, code="auth.unauthenticated"):
    """No bearer token, or one the broker does not know."""


class TokenExpired(BrokerError, code="auth.token_expired"):
    """The bearer token is past its expiry: ask the operator for a new one."""


class TokenRevoked(BrokerError, code="auth.token_revoked"):
    """The bearer token was revoked."""


class Forbidden(BrokerError, code="auth.forbidden"):
    """The token's role may not call this operation."""


class ForeignAgency(BrokerError, code="auth.foreign_agency"):
    """A registrar named another agency's object (agency, focal point, designation, key,
    principal or token): a registrar administers its own agency only."""


class PrincipalSuspended(BrokerError, code="auth.principal_suspended"):
    """The token is valid, but the focal point or agency its principal is bound to is
    suspended (the detail says which): ask the operator; reactivation restores the token."""


class Conflict(BrokerError, code="request.conflict"):
    """The request conflicts with the current state."""


class Unavailable(BrokerError, code="service.unavailable"):
    """The broker cannot reach its database: retry after `Retry-After` seconds."""


class InternalError(BrokerError, code="service.internal"):
    """An unexpected error; quote the `request_id` to the operator."""


class RateLimited(BrokerError, code="rate.limited"):
    """Too many requests (or failed authentications): retry after `Retry-After` seconds."""


# What any gated route may answer besides its own errors: the token check (401; 403 for a
# suspended binding), the request parser (400 malformed JSON, 422 invalid fields), the body
# limits (408, 413), the rate limiter (429), a database outage (503) and a fault of the
# broker's own (500).
COMMON_ERRORS: tuple[type[BrokerError], ...] = (
    Unauthenticated,
    TokenExpired,
    TokenRevoked,
    PrincipalSuspended,
    MalformedRequest,
    InvalidRequest,
    RequestTimeout,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    InternalError,
)
_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}
PROBLEM_MEDIA = "application/problem+json"
EXAMPLE_REQUEST_ID = "5f0c2a9e-3b1d-4e7a-9c55-1a2b3c4d5e6f"
# The field list the request parser gives; other codes carry none in their examples.
_EXAMPLE_FIELDS = {
    "request.invalid": [FieldProblem(pointer="/body/id", detail="Field required")],
    "request.malformed": [
        FieldProblem(pointer="/body/12", detail="JSON decode error: Expecting value")
    ],
}

ErrorSpec = type[BrokerError] | type[CryptoError] | str

# What verifying a compact JWS (an envelope's outer JWS, an acknowledgement) may refuse with.
JWS_REFUSALS: tuple[type[CryptoError], ...] = (
    crypto_errors.TooLarge,
    crypto_errors.Malformed,
    crypto_errors.DuplicateKey,
    crypto_errors.NotIJson,
    crypto_errors.TooDeep,
    crypto_errors.AlgNotAllowed,
    crypto_errors.HeaderForbidden,
    crypto_errors.HeaderUnknown,
    crypto_errors.ZipForbidden,
    crypto_errors.TypMismatch,
    crypto_errors.BadKid,
    crypto_errors.BadSignature,
    crypto_errors.KidMismatch,
    crypto_errors.BadPayload,
)


def codes_of(err: ErrorSpec) -> list[str]:
    """The codes an error class (or a code) stands for: a family stands for all of its own."""
    if isinstance(err, str):
        return [err]
    family = getattr(err, "family", None)
    if family:
        return sorted(code for code in PROBLEMS if code.startswith(family))
    return [err.code]


def meaning(cls: type[BaseException] | None, code: str) -> str:
    """What a code means: the first paragraph of its class's own docstring, else its title."""
    doc = vars(cls).get("__doc__") if cls is not None else None
    if not doc:
        return PROBLEMS[code][1]
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def problem_example(code: str, detail: str | None = None) -> dict[str, Any]:
    """An example problem body for `code`, as the handler renders it (`BrokerError.problem`)."""
    status, title = PROBLEMS[code]
    problem = Problem(
        type=f"urn:exchange-broker:problem:{code}",
        title=title,
        status=status,
        detail=detail or title,
        code=code,
        request_id=EXAMPLE_REQUEST_ID,
        errors=_EXAMPLE_FIELDS.get(code),
    )
    return problem.model_dump(exclude_none=True)


def error_responses(*errors: ErrorSpec) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: each status with the problem schema and, per code
    it may answer with, an example problem (generated from the code's class and PROBLEMS)."""
    by_status: dict[int, dict[str, dict[str, Any]]] = {}
    for err in (*COMMON_ERRORS, *errors):
        for code in codes_of(err):
            own = not isinstance(err, str) and err.code == code and not getattr(err, "family", None)
            cls = err if own and not isinstance(err, str) else None
            example = {
                "summary": PROBLEMS[code][1],
                "value": problem_example(code, meaning(cls, code)),
            }
            by_status.setdefault(PROBLEMS[code][0], {})[code] = example
    return {
        status: {
            "content": {
                PROBLEM_MEDIA: {
                    "schema": _PROBLEM_SCHEMA,
                    "examples": dict(sorted(examples.items())),
                }
            },
            "description": "Problem: " + ", ".join(sorted(examples)),
        }
        for status, examples in sorted(by_status.items())
    }


# Registry errors shared by several domains.
class DuplicateId(BrokerError, code="registry.duplicate_id"):
    """An object with this id already exists."""


class UnknownAgency(BrokerError, code="registry.unknown_agency"):
    """The agency id is not registered."""


class StatusUnchanged(BrokerError, code="registry.status_unchanged"):
    """The agency, focal point or principal already has that status, or the designation
    already ends on that day: nothing was changed or logged."""


# --- docs/reason-codes.md, generated: `python -m broker.errors` (`--check` in CI and tests) ---

# Codes no API operation answers with, and where an integrator meets them instead. A key
# ending in "." stands for every code under it. Every other code must be documented by the
# operations that return it (tests/foundation/test_openapi.py).
NOT_IN_API: dict[str, str] = {
    "broker.error": "the base class's default; every refusal carries a more specific code",
    "http.400": "any path: a request refused by the HTTP layer before it reaches an operation",
    "request.method_not_allowed": "any path, with a method it does not have (405, with `Allow`)",
    "request.conflict": "reserved; not answered today",
    "request.unsupported_media_type": "reserved; not answered today",
    "console.": "the operator console (`/console`, HTML forms)",
    "directory.": "the agency SDK, verifying the signed key directory (`broker.sdk.directory`)",
    "envelope.invalid": "the base of the `envelope.*` codes; every refusal has a specific one",
    "envelope.decrypt_failed": "the agency SDK, opening a received envelope",
    "envelope.iat_too_late": "the agency SDK, opening a received envelope",
    "envelope.not_addressed_to_us": "the agency SDK, opening a received envelope",
    "envelope.routing_mismatch": "the agency SDK, opening a received envelope",
    "key.compromised": "the agency SDK, checking a sender's key at the signing time",
    "key.not_valid_at": "the agency SDK, checking a sender's key at the signing time",
    "key.insecure_storage": "the agency keystore (`broker agency` commands)",
    "key.unreadable": "the agency keystore (`broker agency` commands)",
    "key.weak_passphrase": "the agency keystore (`broker agency` commands)",
    "log.inconsistent": "the log sequencer (a background job); in the broker's logs",
    "push.not_available": "the operator's `redeliver` command",
    "push.not_configured": "the operator's `redeliver` command",
}


def not_in_api(code: str) -> str | None:
    """Where a code no API operation returns is met instead (None: an operation returns it)."""
    for key, where in NOT_IN_API.items():
        if code == key or (key.endswith(".") and code.startswith(key)):
            return where
    return None


def declared_classes() -> dict[str, type[BaseException]]:
    """Each code and the class that declares it, among the classes imported so far."""
    found: dict[str, type[BaseException]] = {}
    todo: list[type[BaseException]] = [*BrokerError.__subclasses__(), *CryptoError.__subclasses__()]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        code = vars(cls).get("code")
        if isinstance(code, str) and code in PROBLEMS and not getattr(cls, "family", None):
            found.setdefault(code, cls)
    return found


def operations_by_code(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Each code and the operations (`GET /v1/me`) whose documented problems include it."""
    found: dict[str, list[str]] = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for response in op.get("responses", {}).values():
                media = response.get("content", {}).get(PROBLEM_MEDIA, {})
                for code in media.get("examples", {}):
                    found.setdefault(code, []).append(f"{method.upper()} {path}")
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reason_codes_markdown(spec: dict[str, Any]) -> str:
    """docs/reason-codes.md: every code, its status, title, meaning and who returns it."""
    classes = declared_classes()
    by_code = operations_by_code(spec)
    gated = {
        f"{method.upper()} {path}"
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    }
    lines = [
        "# Reason codes",
        "",
        "<!-- Generated by `python -m broker.errors` from the error classes, `broker.errors."
        "PROBLEMS` and the OpenAPI document; do not edit. -->",
        "",
        "Every refusal of the API is an RFC 9457 problem (`application/problem+json`) whose",
        "`code` is one of these and never changes meaning; `type` is",
        "`urn:exchange-broker:problem:<code>`. Each operation of `/openapi.json` lists the codes",
        "it may answer with, with an example problem for each (see [api.md](api.md)).",
        "",
    ]
    for family in sorted({code.split(".")[0] for code in PROBLEMS}):
        lines += [f"## {family}", "", "| code | status | title | meaning | returned by |"]
        lines.append("|---|---|---|---|---|")
        for code in sorted(c for c in PROBLEMS if c.split(".")[0] == family):
            status, title = PROBLEMS[code]
            ops = by_code.get(code, [])
            if ops and set(ops) == gated:
                where = "every operation that needs a token"
            elif ops:
                where = ", ".join(f"`{op}`" for op in sorted(ops))
            else:
                where = not_in_api(code) or "**undocumented**"
            text = meaning(classes.get(code), code)
            text = "" if text == title else text
            lines.append(
                f"| `{code}` | {status} | {_cell(title)} | {_cell(text)} | {_cell(where)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Write docs/reason-codes.md; with `--check`, only say whether it is current."""
    from pathlib import Path

    from broker.main import create_app  # the whole application: every route and error class

    target = Path(__file__).resolve().parent.parent / "docs" / "reason-codes.md"
    text = reason_codes_markdown(create_app().openapi())
    if "--check" in argv:
        current = target.exists() and target.read_text(encoding="utf-8") == text
        print(f"{target}: {'current' if current else 'stale: run python -m broker.errors'}")
        return 0 if current else 1
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    import sys

    from broker.errors import main as _main  # the imported module, not this __main__ copy

    raise SystemExit(_main(sys.argv[1:]))
