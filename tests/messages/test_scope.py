"""Submission and agreement scope over HTTP: every reason code the submit path can answer.

One table of refusals in the world of ARCHITECTURE.md section 2. For each: the HTTP status, the
problem's `code`, exactly one `msg.rejected` audit event with that reason and the envelope's
SHA-256, and no message or delivery row. Then the acceptances that belong with them (the
death-penalty rule both ways, keys replaced, replay, the clock's edges, Twin Guardian inside
its window) and a concurrent duplicate submit.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import pytest
import time_machine
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.agreements import policy
from broker.audit.models import AuditEvent
from broker.auth import service as auth
from broker.config import settings
from broker.crypto import envelope as env
from broker.crypto import errors as crypto_errors
from broker.crypto.keys import EncryptionKey, SigningKey, sha256_b64u
from broker.errors import BrokerError, NotFound
from broker.messages import repository, service
from broker.messages.models import Delivery, Message
from tests.agreements.changes import change_agreement
from tests.messages.conftest import BODY, Exchange, new_mid

# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One submit: the envelope, the routing it was built from, and how it is sent."""

    envelope: str
    routing: dict[str, Any]
    fp: str | None = None
    idempotency_key: str | None = "mid"


@dataclass
class World:
    """The exchange harness plus the registrar's side (the admin API)."""

    ex: Exchange
    admin: dict[str, str]
    doc: dict[str, Any]
    frozen_at: int = 0

    def agreement(self, agreement_id: str) -> dict[str, Any]:
        return next(a for a in self.doc["agreements"] if a["id"] == agreement_id)

    def operation(self, operation_id: str) -> dict[str, Any]:
        return next(o for o in self.doc["operations"] if o["id"] == operation_id)

    def put_agreement(self, agreement_id: str, **changes: Any) -> dict[str, Any]:
        """A new version of the agreement: proposed, then approved by each party's registrar."""
        document = {**self.agreement(agreement_id), **changes}
        adopted = change_agreement(
            self.ex.client, self.ex.token_for, document, signers=self.ex.agency_signing
        )
        return {"version": adopted["version"], "sha256": adopted["policy_sha256"]}

    def put_operation(self, operation_id: str, **changes: Any) -> dict[str, Any]:
        document = {**self.operation(operation_id), **changes}
        response = self.ex.client.put(
            f"/v1/admin/operations/{operation_id}", json=document, headers=self.admin
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def admin_post(self, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        response = self.ex.client.post(f"/v1/admin{path}", json=body, headers=self.admin)
        assert response.status_code == status, response.text
        return dict(response.json())

    def register(
        self, key: SigningKey | EncryptionKey, agency: str, fp: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body = {"agency_id": agency, "jwk": key.public.jwk, **extra}
        if fp is not None:
            body["focal_point_id"] = fp
        return self.admin_post("/keys", body, status=201)

    def attempt(self, fp: str = "VN-GDC/fp-hcm-01", **overrides: Any) -> Attempt:
        routing = self.ex.routing(fp, **overrides)
        return Attempt(self.ex.envelope(routing), routing)

    def accepted(self, fp: str = "VN-GDC/fp-hcm-01", **overrides: Any) -> dict[str, Any]:
        """Send an alert that must be accepted; its routing."""
        response, routing, _ = self.ex.send(fp=fp, **overrides)
        assert response.status_code == 201, response.text
        return routing

    def submit(self, attempt: Attempt) -> Any:
        return self.ex.submit(
            attempt.envelope,
            attempt.routing,
            fp=attempt.fp,
            idempotency_key=attempt.idempotency_key,
        )


@pytest.fixture
def w(exchange: Exchange, world: dict[str, Any], admin_headers: dict[str, str]) -> World:
    return World(ex=exchange, admin=admin_headers, doc=world)


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def forge(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, signer: SigningKey
) -> str:
    """A compact JWS over exactly these header and payload bytes (no checks at all)."""
    h = header if isinstance(header, bytes) else _json(header)
    p = payload if isinstance(payload, bytes) else _json(payload)
    signing_input = f"{_b64u(h)}.{_b64u(p)}"
    return f"{signing_input}.{_b64u(signer.sign(signing_input.encode()))}"


def outer_payload(envelope: str) -> dict[str, Any]:
    return dict(json.loads(_unb64u(envelope.split(".")[1])))


def resigned(w: World, attempt: Attempt, edit: Callable[[dict[str, Any]], None]) -> Attempt:
    """The same envelope with its outer payload edited, properly signed again."""
    payload = outer_payload(attempt.envelope)
    edit(payload)
    signer = w.ex.signing[attempt.routing["sender_fp"]]
    header = {"alg": "Ed25519", "kid": signer.kid, "typ": env.TYP_OUTER}
    return Attempt(forge(header, payload, signer), payload["routing"])


def with_header(w: World, attempt: Attempt, header: dict[str, Any] | bytes) -> Attempt:
    """The same payload under another protected header, signed by the focal point."""
    signer = w.ex.signing[attempt.routing["sender_fp"]]
    return Attempt(forge(header, outer_payload(attempt.envelope), signer), attempt.routing)


def _hcm_kid(w: World) -> str:
    return w.ex.signing["VN-GDC/fp-hcm-01"].kid


@dataclass(frozen=True)
class Counts:
    messages: int
    deliveries: int
    rejected: frozenset[uuid.UUID]


def counts() -> Counts:
    async def read(s: AsyncSession) -> Counts:
        rejected = await s.scalars(select(AuditEvent.id).where(AuditEvent.kind == "msg.rejected"))
        return Counts(
            messages=(await s.scalar(select(func.count()).select_from(Message))) or 0,
            deliveries=(await s.scalar(select(func.count()).select_from(Delivery))) or 0,
            rejected=frozenset(rejected.all()),
        )

    return db.call(read)


def _events(kind: str) -> Sequence[AuditEvent]:
    async def read(s: AsyncSession) -> Sequence[AuditEvent]:
        return (await s.scalars(select(AuditEvent).where(AuditEvent.kind == kind))).all()

    return db.call(read)


def rejected_events(digest: str) -> list[AuditEvent]:
    return [e for e in _events("msg.rejected") if e.details.get("envelope_sha256") == digest]


def _messages_with(digest: str) -> Sequence[Message]:
    async def read(s: AsyncSession) -> Sequence[Message]:
        return (await s.scalars(select(Message).where(Message.envelope_sha256 == digest))).all()

    return db.call(read)


def assert_refused(
    response: Any, status: int, code: str, envelope: str, before: Counts
) -> dict[str, Any]:
    """The problem, one msg.rejected event with the reason and the hash, and nothing stored."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = dict(response.json())
    assert (problem["code"], problem["status"]) == (code, status), problem
    assert problem["request_id"]
    digest = sha256_b64u(envelope.encode())
    after = counts()
    new = after.rejected - before.rejected
    assert len(new) == 1, f"{len(new)} msg.rejected events for one refusal"
    (event,) = rejected_events(digest)
    assert event.id in new
    assert event.details["reason"] == code
    assert event.details["envelope_sha256"] == digest
    assert envelope not in json.dumps(event.details)
    assert (after.messages, after.deliveries) == (before.messages, before.deliveries)
    assert not _messages_with(digest)
    return problem


# --- the table of refusals -------------------------------------------------------------------------

Arrange = Callable[[World], Attempt]


@dataclass(frozen=True)
class Refusal:
    code: str
    status: int
    arrange: Arrange
    frozen: bool = False  # run under a frozen clock (w.frozen_at is the server's "now")


def _to_non_party(w: World) -> Attempt:
    # A Mekong Dragon alert to New Zealand Police, which is not in Mekong Dragon.
    return w.attempt(
        recipients=["HK-CED", "NZ-POL"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
    )


MEKONG = {
    "recipients": ["CN-GACC", "HK-CED"],
    "agreement": "MEKONG-DRAGON",
    "operation": "MEKONG-DRAGON-V",
    "offence": "narcotics",
    "subject_types": ["conveyance", "person"],
}
TWIN_GUARDIAN = {
    "recipients": ["KR-KCS"],
    "agreement": "VN-KR-CUSTOMS",
    "operation": "TWIN-GUARDIAN-II",
    "offence": "nps",
    "subject_types": ["online_platform", "person", "shipment"],
}
NZ_TO_VN = {
    "recipients": ["VN-MPS"],
    "agreement": "VN-NZ-TNC-2019",
    "offence": "narcotics",
    "subject_types": ["person", "shipment"],
}


def _suspended_agreement(w: World) -> Attempt:
    w.put_agreement("VN-HK-CMAA-2013", status="suspended")
    return w.attempt()


def _agreement_ended(w: World) -> Attempt:
    w.put_agreement("VN-HK-CMAA-2013", valid_until="2025-12-31")
    return w.attempt()


def _suspended_operation(w: World) -> Attempt:
    w.put_operation("MEKONG-DRAGON-V", status="suspended")
    return w.attempt(**MEKONG)


def _operation_without(w: World) -> Attempt:
    # A phase of Mekong Dragon in which China Customs does not take part.
    members = [m for m in w.operation("MEKONG-DRAGON-V")["members"] if m != "CN-GACC"]
    w.put_operation("MEKONG-DRAGON-V", members=members)
    return w.attempt(**MEKONG)


def _red_multilateral(w: World) -> Attempt:
    w.put_agreement("MEKONG-DRAGON", max_handling="TLP:RED")
    return w.attempt(**MEKONG, handling="TLP:RED")


def _feedback(w: World, fp: str, alert: dict[str, Any], **overrides: Any) -> Attempt:
    values = {
        "kind": "feedback",
        "recipients": [alert["sender"]],
        "agreement": alert["agreement"],
        "operation": alert["operation"],
        "offence": alert["offence"],
        "subject_types": ["seizure"],
        "in_reply_to": alert["mid"],
        "outcome": "seized",
        "commodity": "narcotics",
        "quantity_band": "10_100kg",
        **overrides,
    }
    return w.attempt(fp, **values)


def _feedback_not_recipient(w: World) -> Attempt:
    # Korea Customs answers an alert that Viet Nam sent to Hong Kong only.
    alert = w.accepted(offence="narcotics")
    return _feedback(w, "KR-KCS/fp-01", alert, agreement="VN-KR-CUSTOMS", operation=None)


def _feedback_unknown_alert(w: World) -> Attempt:
    # No such alert at all: the same answer as for someone else's alert (no existence oracle).
    alert = {**w.ex.routing(), "mid": new_mid(), "offence": "narcotics"}
    return _feedback(w, "HK-CED/fp-01", alert)


def _feedback_wrong_recipient(w: World) -> Attempt:
    alert = w.accepted(**MEKONG)
    return _feedback(w, "HK-CED/fp-01", alert, recipients=["CN-GACC"])


def _feedback_other_agreement(w: World) -> Attempt:
    alert = w.accepted(offence="narcotics")  # under VN-HK-CMAA-2013
    return _feedback(w, "HK-CED/fp-01", alert, agreement="MEKONG-DRAGON", subject_types=["seizure"])


def _too_large(w: World) -> Attempt:
    limit = settings().max_envelope_bytes
    routing = w.ex.routing()
    big = w.ex.envelope(routing, body={**BODY, "summary": "x" * (limit // 2)})
    assert limit < len(big) < settings().max_request_bytes - 100
    return Attempt(big, routing)


def _header(w: World, **members: Any) -> dict[str, Any]:
    return {"alg": "Ed25519", "kid": _hcm_kid(w), "typ": env.TYP_OUTER, **members}


def _raw_header(text: str) -> Arrange:
    """The focal point's payload under this exact header text (KID: the focal point's kid)."""
    return lambda w: with_header(w, w.attempt(), text.replace("KID", _hcm_kid(w)).encode())


def _with(**members: Any) -> Arrange:
    return lambda w: with_header(w, w.attempt(), _header(w, **members))


def _revoked(w: World) -> Attempt:
    w.admin_post(
        f"/keys/{_hcm_kid(w)}/revoke",
        {"reason": "key_compromise", "compromised_since": datetime.now(UTC).isoformat()},
    )
    return w.attempt()


def _retired(w: World) -> Attempt:
    successor = SigningKey.generate()
    w.admin_post(f"/keys/{_hcm_kid(w)}/rotate", {"jwk": successor.public.jwk}, status=201)
    return w.attempt()  # still signed with the old, now retired key


def _not_yet_valid(w: World) -> Attempt:
    early = SigningKey.generate()
    starts = datetime.now(UTC) + timedelta(hours=1)
    w.register(early, "VN-GDC", "VN-GDC/fp-hcm-01", not_before=starts.isoformat())
    routing = w.ex.routing()
    return Attempt(w.ex.envelope(routing, signer=early), routing)


def _wrong_use(w: World) -> Attempt:
    # The kid of Hong Kong's encryption key in the signature header.
    return with_header(w, w.attempt(), _header(w, kid=w.ex.encryption["HK-CED"].kid))


def _bad_signature(w: World) -> Attempt:
    attempt = w.attempt()
    head, payload, _ = attempt.envelope.split(".")
    return Attempt(f"{head}.{payload}.{_b64u(bytes(64))}", attempt.routing)


def _sender_mismatch_agency(w: World) -> Attempt:
    # Signed by Viet Nam's focal point, routed as if from Hong Kong's.
    routing = w.ex.routing("HK-CED/fp-01", recipients=["VN-GDC"])
    return Attempt(
        w.ex.envelope(routing, signer=w.ex.signing["VN-GDC/fp-hcm-01"]),
        routing,
        fp="VN-GDC/fp-hcm-01",
    )


def _sender_mismatch_desk(w: World) -> Attempt:
    # Same agency, another desk's focal point id under the Ho Chi Minh City desk's key.
    routing = w.ex.routing("VN-GDC/fp-hn-01", **{**TWIN_GUARDIAN, "operation": None})
    return Attempt(
        w.ex.envelope(routing, signer=w.ex.signing["VN-GDC/fp-hcm-01"]),
        routing,
        fp="VN-GDC/fp-hcm-01",
    )


def _not_the_signer(w: World) -> Attempt:
    attempt = w.attempt()
    return Attempt(attempt.envelope, attempt.routing, fp="VN-GDC/fp-hn-01")


def _no_idempotency_key(w: World) -> Attempt:
    attempt = w.attempt()
    return Attempt(attempt.envelope, attempt.routing, idempotency_key=None)


def _other_idempotency_key(w: World) -> Attempt:
    attempt = w.attempt()
    return Attempt(attempt.envelope, attempt.routing, idempotency_key=new_mid())


def _mid_reused(w: World) -> Attempt:
    first = w.accepted()
    routing = dict(first)
    return Attempt(w.ex.envelope(routing, body={**BODY, "title": "A different alert"}), routing)


def _iat(offset: int) -> Arrange:
    def arrange(w: World) -> Attempt:
        iat = w.frozen_at + offset
        return w.attempt(iat=iat, exp=iat + 86400)

    return arrange


def _expired(w: World) -> Attempt:
    return w.attempt(iat=w.frozen_at - 200, exp=w.frozen_at)


def _ttl_too_long(w: World) -> Attempt:
    return w.attempt(iat=w.frozen_at, exp=w.frozen_at + service.MAX_TTL_S + 1)


def _jwe_edit(edit: Callable[[dict[str, Any]], None]) -> Arrange:
    return lambda w: resigned(w, w.attempt(), lambda payload: edit(payload["jwe"]))


def _low_order_epk(jwe: dict[str, Any]) -> None:
    jwe["recipients"][0]["header"]["epk"]["x"] = _b64u(bytes(32))


def _encrypted_to_another_agency(w: World) -> Attempt:
    routing = w.ex.routing()
    envelope = env.build_envelope(
        routing,
        BODY,
        w.ex.signing["VN-GDC/fp-hcm-01"],
        {"HK-CED": w.ex.encryption["KR-KCS"].public},
    )
    return Attempt(envelope, routing)


def _extra_jwe_entry(w: World) -> Attempt:
    # Routed to Hong Kong only, with a second entry that lets China Customs read it too.
    wide = w.attempt(**MEKONG)
    narrow = w.ex.routing(**{**MEKONG, "recipients": ["HK-CED"]})
    return resigned(w, wide, lambda payload: payload.update(routing=narrow))


def _recipient_key_retired(w: World) -> Attempt:
    w.admin_post(f"/keys/{w.ex.encryption['HK-CED'].kid}/retire", {})
    return w.attempt()


def _bad_payload(w: World) -> Attempt:
    return resigned(w, w.attempt(), lambda payload: payload.update(note="hello"))


def _bad_routing(w: World) -> Attempt:
    routing = w.ex.routing(priority="whenever")
    return Attempt(w.ex.envelope(routing), routing)


def _two_segments(w: World) -> Attempt:
    attempt = w.attempt()
    return Attempt(".".join(attempt.envelope.split(".")[:2]), attempt.routing)


def _deep(depth: int) -> Any:
    return {"a": _deep(depth - 1)} if depth else 1


REFUSALS: dict[str, Refusal] = {
    # PROTOCOL 4.4 steps 1-2: limits and the header, before any lookup.
    "over-the-size-limit": Refusal("envelope.too_large", 413, _too_large),
    "two-segments": Refusal("envelope.malformed", 400, _two_segments),
    "duplicate-header-member": Refusal(
        "envelope.duplicate_key",
        400,
        _raw_header('{"alg":"Ed25519","alg":"EdDSA","kid":"KID","typ":"alert-envelope+jws"}'),
    ),
    "header-nests-too-deep": Refusal("envelope.too_deep", 400, _with(x=_deep(5))),
    "header-with-unsafe-integer": Refusal(
        "envelope.not_i_json",
        400,
        _raw_header(
            '{"alg":"Ed25519","kid":"KID","typ":"alert-envelope+jws","n":9007199254740993}'
        ),
    ),
    "compression": Refusal("envelope.zip_forbidden", 400, _with(zip="DEF")),
    "header-jku": Refusal("envelope.header_forbidden", 400, _with(jku="https://evil.example/")),
    "header-cty": Refusal("envelope.header_unknown", 400, _with(cty="alert+jws")),
    "alg-hs256": Refusal("envelope.alg_not_allowed", 400, _with(alg="HS256")),
    "inner-typ-outside": Refusal("envelope.typ_mismatch", 400, _with(typ=env.TYP_INNER)),
    "kid-not-a-thumbprint": Refusal("envelope.bad_kid", 400, _with(kid="fp-hcm-01")),
    # Step 3: the key.
    "unregistered-key": Refusal(
        "key.unknown",
        422,
        lambda w: Attempt(w.ex.envelope(r := w.ex.routing(), signer=SigningKey.generate()), r),
    ),
    "encryption-key-as-signer": Refusal("key.wrong_use", 422, _wrong_use),
    "revoked-signing-key": Refusal("key.revoked", 422, _revoked),
    "retired-signing-key": Refusal("key.retired", 422, _retired),
    "signing-key-not-yet-valid": Refusal("key.not_valid_now", 422, _not_yet_valid),
    # Steps 4-5: the signature, then the payload and the routing schema.
    "bad-signature": Refusal("envelope.bad_signature", 422, _bad_signature),
    "extra-payload-member": Refusal("envelope.bad_payload", 422, _bad_payload),
    "routing-against-the-schema": Refusal("envelope.bad_routing", 422, _bad_routing),
    # Step 6: sender binding.
    "key-of-another-agency": Refusal("envelope.sender_mismatch", 422, _sender_mismatch_agency),
    "key-of-another-desk": Refusal("envelope.sender_mismatch", 422, _sender_mismatch_desk),
    "token-of-another-focal-point": Refusal("auth.sender_mismatch", 403, _not_the_signer),
    # Step 7: idempotency and replay.
    "no-idempotency-key": Refusal("idempotency.missing", 400, _no_idempotency_key),
    "idempotency-key-not-the-mid": Refusal("idempotency.key_mismatch", 400, _other_idempotency_key),
    "same-mid-other-envelope": Refusal("replay.mid_reused", 422, _mid_reused),
    # Step 8: the clock (frozen: the server's now is w.frozen_at).
    "iat-301s-ago": Refusal("replay.iat_out_of_window", 422, _iat(-301), frozen=True),
    "iat-121s-ahead": Refusal("replay.iat_out_of_window", 422, _iat(121), frozen=True),
    "expires-now": Refusal("envelope.bad_exp", 422, _expired, frozen=True),
    "lives-longer-than-max-ttl": Refusal("envelope.bad_exp", 422, _ttl_too_long, frozen=True),
    # Step 9: scope, in the order policy.decide checks it.
    "unknown-agreement": Refusal(
        "scope.agreement_unknown", 403, lambda w: w.attempt(agreement="VN-FR-NOTHING")
    ),
    "suspended-agreement": Refusal("scope.agreement_suspended", 403, _suspended_agreement),
    "agreement-ended": Refusal("scope.agreement_not_in_force", 403, _agreement_ended),
    "sender-not-party": Refusal(
        "scope.agreement_unknown",
        403,
        lambda w: w.attempt(**{**NZ_TO_VN, "recipients": ["NZ-POL"]}),
    ),
    "mekong-dragon-alert-to-a-non-member": Refusal("scope.recipient_not_party", 403, _to_non_party),
    "focal-point-designated-under-another-agreement": Refusal(
        "scope.focal_point_not_designated", 403, lambda w: w.attempt("VN-GDC/fp-hn-01")
    ),
    "offence-not-covered": Refusal(
        "scope.offence_not_covered", 403, lambda w: w.attempt(offence="cybercrime")
    ),
    "subject-type-not-covered": Refusal(
        "scope.subject_type_not_covered",
        403,
        lambda w: w.attempt(subject_types=["online_platform", "route"]),
    ),
    "unknown-operation": Refusal(
        "scope.operation_unknown", 403, lambda w: w.attempt(operation="NO-SUCH-OPERATION")
    ),
    "operation-of-another-agreement": Refusal(
        "scope.operation_other_agreement",
        403,
        lambda w: w.attempt(**{**TWIN_GUARDIAN, "operation": "MEKONG-DRAGON-V"}),
    ),
    "suspended-operation": Refusal("scope.operation_suspended", 403, _suspended_operation),
    "twin-guardian-outside-its-window": Refusal(
        "scope.operation_outside_window", 403, lambda w: w.attempt(**TWIN_GUARDIAN)
    ),
    "operation-member-left": Refusal("scope.operation_not_member", 403, _operation_without),
    "rilo-sends-under-mekong-dragon": Refusal(
        "scope.sender_receive_only",
        403,
        lambda w: w.attempt(
            "INT-WCO-RILOAP/fp-analyst-01", **{**MEKONG, "recipients": ["CN-GACC", "VN-GDC"]}
        ),
    ),
    "addressed-to-the-members-but-two": Refusal(
        "scope.audience_incomplete", 403, lambda w: w.attempt(**MEKONG, audience="members")
    ),
    "nz-to-vn-narcotics": Refusal(
        "scope.direction_excluded", 403, lambda w: w.attempt("NZ-POL/fp-01", **NZ_TO_VN)
    ),
    "red-above-the-agreement": Refusal(
        "scope.handling_above_agreement", 403, lambda w: w.attempt(handling="TLP:RED")
    ),
    "red-to-two-recipients": Refusal(
        "scope.handling_above_agreement",
        403,
        lambda w: w.attempt(**MEKONG, handling="TLP:RED"),  # Mekong Dragon allows up to AMBER
    ),
    "red-to-two-recipients-where-red-is-allowed": Refusal(
        "scope.red_multilateral", 403, _red_multilateral
    ),
    "feedback-from-a-non-recipient": Refusal(
        "scope.feedback_not_recipient", 403, _feedback_not_recipient
    ),
    "feedback-on-an-unknown-alert": Refusal(
        "scope.feedback_not_recipient", 403, _feedback_unknown_alert
    ),
    "feedback-to-another-member": Refusal(
        "scope.feedback_wrong_recipient", 403, _feedback_wrong_recipient
    ),
    "feedback-under-another-agreement": Refusal(
        "scope.feedback_other_agreement", 403, _feedback_other_agreement
    ),
    # Step 10: the JWE, without decrypting.
    "short-iv": Refusal(
        "envelope.jwe_structure", 400, _jwe_edit(lambda jwe: jwe.update(iv=_b64u(bytes(8))))
    ),
    "low-order-epk": Refusal("envelope.low_order_epk", 400, _jwe_edit(_low_order_epk)),
    "encrypted-to-another-agency": Refusal(
        "envelope.jwe_recipients_mismatch", 422, _encrypted_to_another_agency
    ),
    "an-extra-reader": Refusal("envelope.jwe_recipients_mismatch", 422, _extra_jwe_entry),
    "recipient-key-retired": Refusal("key.recipient_no_key", 422, _recipient_key_retired),
}

# The codes the submit path can answer (broker/messages/service.py, broker/crypto/errors.py).
SUBMIT_CODES = {
    *policy.CODES,
    "scope.feedback_not_recipient",
    "scope.feedback_wrong_recipient",
    "scope.feedback_other_agreement",
    "envelope.too_large",
    "envelope.malformed",
    "envelope.duplicate_key",
    "envelope.too_deep",
    "envelope.not_i_json",
    "envelope.zip_forbidden",
    "envelope.header_forbidden",
    "envelope.header_unknown",
    "envelope.alg_not_allowed",
    "envelope.typ_mismatch",
    "envelope.bad_kid",
    "envelope.bad_signature",
    "envelope.bad_payload",
    "envelope.bad_routing",
    "envelope.sender_mismatch",
    "envelope.bad_exp",
    "envelope.jwe_structure",
    "envelope.low_order_epk",
    "envelope.jwe_recipients_mismatch",
    "auth.sender_mismatch",
    "key.unknown",
    "key.wrong_use",
    "key.revoked",
    "key.retired",
    "key.not_valid_now",
    "key.recipient_no_key",
    "idempotency.missing",
    "idempotency.key_mismatch",
    "replay.mid_reused",
    "replay.iat_out_of_window",
    "idempotency.in_flight",
    "correction.unknown_message",
    "correction.agreement_differs",
    "correction.recipients_differ",
    "correction.already_superseded",
    "message.purged",
}
# Answered by the submit path but tested outside the table: the concurrent duplicate, and the
# corrections (tests/messages/test_corrections.py), which need an earlier message.
ELSEWHERE = {
    "idempotency.in_flight": "test_concurrent_duplicate_submit",
    "correction.unknown_message": "test_only_your_own_message_can_be_corrected_and_only_once",
    "correction.agreement_differs": "test_a_correction_to_other_recipients_or_under_another_...",
    "correction.recipients_differ": "test_a_correction_to_other_recipients_or_under_another_...",
    "correction.already_superseded": "test_only_your_own_message_can_be_corrected_and_only_once",
    "message.purged": "test_a_purged_message_cannot_be_corrected",
    # Over HTTP a suspended desk's token is refused at login first (auth.principal_suspended);
    # the scope code answers a submit that authenticated just before the suspension.
    "scope.focal_point_inactive": "tests/foundation/test_lifecycle_of_participants.py::"
    "test_a_submit_that_authenticated_before_the_suspension_is_out_of_scope",
}
# Defined where the submit path's codes are, but never its answer.
NOT_SUBMIT_ANSWERS = {
    "scope.feedback_unknown_alert": "never raised: an unknown alert answers "
    "feedback_not_recipient, so that nobody learns whether a mid exists",
    "envelope.kid_mismatch": "the key is looked up by the header's kid, so they always match",
    "envelope.not_addressed_to_us": "recipient side (open_envelope)",
    "envelope.routing_mismatch": "recipient side (open_envelope)",
    "envelope.decrypt_failed": "recipient side (open_envelope)",
    "envelope.iat_too_late": "recipient side (log time against iat)",
    "envelope.invalid": "the base class",
}


def test_the_table_covers_every_code_of_the_submit_path() -> None:
    tabled = {r.code for r in REFUSALS.values()}
    assert tabled | ELSEWHERE.keys() == SUBMIT_CODES
    # Every code the submit path's modules define is either answered (and tabled) or listed
    # above with the reason it is not: a new code cannot slip in untested.
    defined = {
        c.code for c in vars(service).values() if isinstance(c, type) and issubclass(c, BrokerError)
    } - {BrokerError.code, NotFound.code}
    defined |= {
        c.code
        for c in vars(crypto_errors).values()
        if isinstance(c, type) and issubclass(c, crypto_errors.EnvelopeError)
    }
    assert defined - SUBMIT_CODES == NOT_SUBMIT_ANSWERS.keys()


def _clock(w: World, frozen: bool) -> AbstractContextManager[Any]:
    # A whole second, after every key the fixtures registered (their not_before is "now"
    # with microseconds): frozen at int(time.time()) the keys would not be valid yet.
    w.frozen_at = int(time.time()) + 1
    if not frozen:
        return nullcontext()
    return time_machine.travel(datetime.fromtimestamp(w.frozen_at, UTC), tick=False)


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal(w: World, case: Refusal) -> None:
    with _clock(w, case.frozen):
        attempt = case.arrange(w)
        before = counts()
        response = w.submit(attempt)
    assert_refused(response, case.status, case.code, attempt.envelope, before)


# --- acceptances that belong with the refusals ------------------------------------------------------


def _accepted_event(mid: str) -> AuditEvent:
    (event,) = [e for e in _events("msg.accepted") if e.details["mid"] == mid]
    return event


def _policy_sha256(agreement_sha256: str, operation_sha256: str = "") -> str:
    return policy.Policy(
        agreement=None, agreement_sha256=agreement_sha256, operation_sha256=operation_sha256
    ).sha256


def _refuse(w: World, attempt: Attempt, status: int, code: str) -> None:
    before = counts()
    assert_refused(w.submit(attempt), status, code, attempt.envelope, before)


def _accept(w: World, attempt: Attempt) -> dict[str, Any]:
    response = w.submit(attempt)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_death_penalty_rule_both_ways_and_the_assurance(w: World) -> None:
    # VN-MPS -> NZ-POL: no exclusion in that direction.
    back = w.attempt("VN-MPS/fp-01", **{**NZ_TO_VN, "recipients": ["NZ-POL"]})
    _accept(w, back)
    # NZ-POL -> VN-MPS, narcotics: refused while no assurance is recorded.
    forth = w.attempt("NZ-POL/fp-01", **NZ_TO_VN)
    _refuse(w, forth, 403, "scope.direction_excluded")
    # The registrar records New Zealand's assurance: a new version of the agreement.
    assurance = {
        "from": "NZ-POL",
        "to": "VN-MPS",
        "offence": "narcotics",
        "reference": "Exchange of notes on the death penalty",
        "recorded_at": datetime.now(UTC).date().isoformat(),
    }
    v2 = w.put_agreement("VN-NZ-TNC-2019", assurances=[assurance])
    assert v2["version"] == 2
    # The refused envelope never burnt its mid: the same bytes are accepted now.
    _accept(w, forth)
    _accept(w, w.attempt("NZ-POL/fp-01", **NZ_TO_VN))
    # The log says which version of the agreement each decision applied.
    versions = w.ex.client.get(
        "/v1/admin/agreements/VN-NZ-TNC-2019/versions", headers=w.admin
    ).json()
    v1 = next(v for v in versions if v["version"] == 1)
    applied = _accepted_event(back.routing["mid"]).details["policy_sha256"]
    assert applied == _policy_sha256(v1["sha256"])
    assert _accepted_event(forth.routing["mid"]).details["policy_sha256"] == _policy_sha256(
        v2["sha256"]
    )
    # Other offences in that direction never needed an assurance.
    _accept(w, w.attempt("NZ-POL/fp-01", **{**NZ_TO_VN, "offence": "money_laundering"}))


def test_a_retired_recipient_key_then_its_successor(w: World) -> None:
    old = w.ex.encryption["HK-CED"]
    w.admin_post(f"/keys/{old.kid}/retire", {})
    # Hong Kong's only encryption key is retired: nothing can be sent to it.
    _refuse(w, w.attempt(), 422, "key.recipient_no_key")
    # Hong Kong registers a new key: accepted when encrypted to it...
    new = EncryptionKey.generate()
    w.register(new, "HK-CED")
    w.ex.encryption["HK-CED"] = new
    _accept(w, w.attempt())
    # ... and still refused when encrypted to the retired one.
    routing = w.ex.routing()
    stale = env.build_envelope(
        routing, BODY, w.ex.signing["VN-GDC/fp-hcm-01"], {"HK-CED": old.public}
    )
    _refuse(w, Attempt(stale, routing), 422, "envelope.jwe_recipients_mismatch")


def test_a_revoked_signing_key_then_its_successor(w: World) -> None:
    _refuse(w, _revoked(w), 422, "key.revoked")
    successor = SigningKey.generate()
    w.register(successor, "VN-GDC", "VN-GDC/fp-hcm-01")
    w.ex.signing["VN-GDC/fp-hcm-01"] = successor
    _accept(w, w.attempt())


def test_replay_returns_the_original_receipt_even_after_the_window(w: World) -> None:
    attempt = w.attempt()
    first = _accept(w, attempt)
    before = counts()
    again = w.submit(attempt)
    assert again.status_code == 200, again.text
    assert again.json() == first
    # Ten minutes later iat is out of the window, but replay is checked first (PROTOCOL 4.4).
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=False):
        late = w.submit(attempt)
    assert late.status_code == 200, late.text
    assert late.json() == first
    assert counts() == before  # no new message, delivery or msg.rejected
    # The same mid with another envelope: 422, and the original stays.
    other = Attempt(
        w.ex.envelope(attempt.routing, body={**BODY, "title": "Changed"}), attempt.routing
    )
    _refuse(w, other, 422, "replay.mid_reused")
    assert w.submit(attempt).json() == first


@pytest.mark.parametrize("offset", [-300, 120], ids=["iat-300s-ago", "iat-120s-ahead"])
def test_the_clock_window_is_inclusive(w: World, offset: int) -> None:
    # Its outer edges (-301, +121) are refused in test_refusal.
    with _clock(w, frozen=True):
        receipt = _accept(w, w.attempt(iat=w.frozen_at + offset, exp=w.frozen_at + 86400))
    # time-machine reached the server's threads: the receipt carries the frozen time.
    assert datetime.fromisoformat(receipt["accepted_at"]) == datetime.fromtimestamp(
        w.frozen_at, UTC
    )


@pytest.mark.parametrize(
    ("moment", "code"),
    [
        ("2024-06-30T23:59:59Z", "scope.operation_outside_window"),
        ("2024-07-01T00:00:00Z", None),
        ("2024-08-31T23:59:59Z", None),
        ("2024-09-01T00:00:00Z", "scope.operation_outside_window"),
    ],
    ids=["day-before", "first-second", "last-second", "day-after"],
)
def test_twin_guardian_inside_and_outside_its_window(
    w: World, moment: str, code: str | None
) -> None:
    # Keys valid in 2024 for the sender and the recipient.
    since = {"not_before": "2024-06-01T00:00:00Z"}
    signer, kr = SigningKey.generate(), EncryptionKey.generate()
    w.register(signer, "VN-GDC", "VN-GDC/fp-hcm-01", **since)
    w.register(kr, "KR-KCS", **since)
    w.ex.signing["VN-GDC/fp-hcm-01"], w.ex.encryption["KR-KCS"] = signer, kr
    with time_machine.travel(datetime.fromisoformat(moment), tick=False):
        attempt = w.attempt(**TWIN_GUARDIAN)
        if code is None:
            _accept(w, attempt)
        else:
            _refuse(w, attempt, 403, code)


def test_suspension_of_agreement_and_operation_is_lifted_by_a_new_version(w: World) -> None:
    w.put_agreement("MEKONG-DRAGON", status="suspended")
    _refuse(w, w.attempt(**MEKONG), 403, "scope.agreement_suspended")
    w.put_agreement("MEKONG-DRAGON")
    w.put_operation("MEKONG-DRAGON-V", status="suspended")
    _refuse(w, w.attempt(**MEKONG), 403, "scope.operation_suspended")
    w.put_operation("MEKONG-DRAGON-V")
    _accept(w, w.attempt(**MEKONG))


def test_red_to_one_recipient_where_the_agreement_allows_it(w: World) -> None:
    w.put_agreement("MEKONG-DRAGON", max_handling="TLP:RED")
    _accept(w, w.attempt(**{**MEKONG, "recipients": ["HK-CED"]}, handling="TLP:RED"))
    _refuse(w, w.attempt(**MEKONG, handling="TLP:RED"), 403, "scope.red_multilateral")


# --- a concurrent duplicate ---------------------------------------------------------------------


def test_concurrent_duplicate_submit(
    w: World, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two submits of one envelope at once.

    PostgreSQL: a submit takes the (sender, mid) advisory lock in its transaction before any
    further check and holds it until it commits; another submit of the same message meanwhile
    answers 409 without looking further. The test holds that lock from its own transaction,
    as an in-flight submit would (the submit path runs on the event loop, so it cannot be
    paused in the middle without pausing the test client too). SQLite runs writers one at a
    time: a second submit waits for the first (held at its scope decision, which blocks the
    test client's event loop) to commit and replays its receipt (200). That second submit
    runs the service on another event loop (the sync callers' one), so that it really is in
    flight, waiting for the write lock, while the first is held."""
    real = policy.decide
    calls: list[None] = []
    entered, release = threading.Event(), threading.Event()

    def counted(*args: Any) -> policy.Decision:
        # The first decision waits until released (SQLite): its transaction stays open.
        calls.append(None)
        if backend == "sqlite" and len(calls) == 1:
            entered.set()
            release.wait(30)
        return real(*args)

    monkeypatch.setattr(policy, "decide", counted)
    attempt = w.attempt()
    digest = sha256_b64u(attempt.envelope.encode())
    if backend == "postgresql":
        mid = uuid.UUID(attempt.routing["mid"])
        key = repository.lock_key(attempt.routing["sender"], mid)

        def in_flight() -> None:
            before = counts()
            second = w.submit(attempt)
            # Nothing stored, one msg.rejected, and no scope decision made.
            assert_refused(second, 409, "idempotency.in_flight", attempt.envelope, before)
            assert second.headers["Retry-After"] == "1"
            assert not calls

        async def while_locked() -> None:
            # A connection of the test's own holds the lock while `in_flight` runs (in a
            # worker thread: its requests need this event loop free).
            async with db.engine().connect() as holder:
                await holder.execute(text("select pg_advisory_xact_lock(:key)"), {"key": key})
                await anyio.to_thread.run_sync(in_flight)
                await holder.rollback()  # the in-flight submit ends: the lock is free again

        db.run(while_locked)
        first = w.submit(attempt)
        assert first.status_code == 201, first.text
        receipt = first.json()
    else:
        fp = attempt.routing["sender_fp"]
        w.ex.fp_headers(fp)  # the focal point's token, issued now
        token = w.ex.tokens[fp]

        async def submit_again(s: AsyncSession) -> service.Outcome:
            caller = await auth.authenticate(s, token)
            return await service.submit(s, caller, attempt.envelope, attempt.routing["mid"])

        answers: dict[str, Any] = {}
        threads = [
            threading.Thread(target=lambda: answers.update(first=w.submit(attempt))),
            threading.Thread(target=lambda: answers.update(second=db.call(submit_again))),
        ]
        threads[0].start()
        try:
            assert entered.wait(30), "the first submit never reached the scope decision"
            threads[1].start()
            time.sleep(0.5)  # let it queue on the write lock (if it is later, it replays anyway)
        finally:
            release.set()
            for thread in threads:
                thread.join(30)
        assert answers["first"].status_code == 201, answers["first"].text
        receipt = answers["first"].json()
        second_outcome: service.Outcome = answers["second"]
        assert second_outcome.status == 200, second_outcome.refusal
        assert second_outcome.receipt is not None
        assert json.loads(second_outcome.receipt.model_dump_json()) == receipt
        assert not rejected_events(digest)
    # Afterwards, a retry replays the original receipt; one message was stored.
    again = w.submit(attempt)
    assert (again.status_code, again.json()) == (200, receipt)
    assert len(_messages_with(digest)) == 1
    assert len(calls) == 1  # the others never got as far as the scope check


# --- who a refusal is logged against ------------------------------------------------------------


def test_a_forged_sender_is_logged_against_the_signer(w: World) -> None:
    """A refusal names the agency whose key signed, never the one the routing only claims:
    auditors of Hong Kong must not see Viet Nam's forgery as Hong Kong's, and Viet Nam's
    auditors must see it."""
    attempt = _sender_mismatch_agency(w)  # VN-GDC's key, routing "from" HK-CED
    _refuse(w, attempt, 422, "envelope.sender_mismatch")
    (event,) = rejected_events(sha256_b64u(attempt.envelope.encode()))
    assert event.subject == "VN-GDC"
    assert event.details["sender"] == "VN-GDC"
    assert event.details["sender_fp"] == "VN-GDC/fp-hcm-01"
    assert "HK-CED" not in json.dumps(event.details)


def test_an_unverified_signature_names_nobody(w: World) -> None:
    # Anyone can put Viet Nam's kid in a header: before the signature verifies, no agency is
    # named, so that nobody can make the log attribute refusals to someone else.
    attempt = _bad_signature(w)
    _refuse(w, attempt, 422, "envelope.bad_signature")
    (event,) = rejected_events(sha256_b64u(attempt.envelope.encode()))
    assert event.subject is None
    assert set(event.details) == {"reason", "envelope_sha256"}


def test_a_refusal_after_the_binding_carries_the_routing(w: World) -> None:
    attempt = w.attempt("NZ-POL/fp-01", **NZ_TO_VN)
    _refuse(w, attempt, 403, "scope.direction_excluded")
    (event,) = rejected_events(sha256_b64u(attempt.envelope.encode()))
    assert event.subject == "NZ-POL"
    routing = attempt.routing
    assert {k: event.details[k] for k in ("mid", "sender", "sender_fp", "recipients")} == {
        k: routing[k] for k in ("mid", "sender", "sender_fp", "recipients")
    }
    assert (event.details["agreement"], event.details["offence"]) == ("VN-NZ-TNC-2019", "narcotics")
