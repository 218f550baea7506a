"""Submission (PROTOCOL.md 4.4, cheap checks first, fail closed), dry runs and status.

The broker never decrypts: it verifies the outer signature against the key directory, checks
the signed routing header against the agreement in force, checks the JWE's shape and recipient
entries, and then stores the envelope verbatim with its deliveries, audit event and outbox row
in one transaction. Every refusal after authentication is itself recorded (`msg.rejected`, with
the envelope's hash, never the envelope).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broker import jobs, keyring, schemas
from broker.agreements import policy as scope
from broker.audit import service as audit
from broker.auth.service import Caller
from broker.config import settings
from broker.crypto import envelope as env
from broker.crypto.errors import CryptoError, SenderMismatch
from broker.crypto.keys import sha256_b64u
from broker.errors import BrokerError, FieldProblem, NotFound, OutOfScope, Refused
from broker.faults import crash_point
from broker.ids import epoch_ms, new_id, utcnow
from broker.messages import repository
from broker.messages.models import Message
from broker.messages.schemas import (
    CheckOut,
    DeliveryStatus,
    MessageStatus,
    OverdueItem,
    OverduePage,
    Receipt,
)
from broker.registry import snapshot as registry
from broker.registry.snapshot import Snapshot

IAT_PAST_S = 300
IAT_FUTURE_S = 120
MAX_TTL_S = 30 * 24 * 3600
MAX_MERGE_DELAY_MS = 1000


class MissingIdempotencyKey(BrokerError, code="idempotency.missing"): ...


class IdempotencyKeyMismatch(BrokerError, code="idempotency.key_mismatch"): ...


class InFlight(BrokerError, code="idempotency.in_flight"): ...


class MidReused(BrokerError, code="replay.mid_reused"): ...


class IatOutOfWindow(BrokerError, code="replay.iat_out_of_window"): ...


class BadExpiry(BrokerError, code="envelope.bad_exp"): ...


class BadRouting(BrokerError, code="envelope.bad_routing"): ...


class NotTheSigner(BrokerError, code="auth.sender_mismatch"): ...


class RecipientNoKey(BrokerError, code="key.recipient_no_key"): ...


class FeedbackUnknownAlert(BrokerError, code="scope.feedback_unknown_alert"): ...


class Purged(BrokerError, code="message.purged"): ...


class CorrectionUnknown(BrokerError, code="correction.unknown_message"): ...


class CorrectionAgreementDiffers(BrokerError, code="correction.agreement_differs"): ...


class CorrectionRecipientsDiffer(BrokerError, code="correction.recipients_differ"): ...


class AlreadySuperseded(BrokerError, code="correction.already_superseded"): ...


async def _check_correction(session: AsyncSession, routing: dict[str, Any]) -> None:
    """A correction replaces one earlier message of the same sender, under the same agreement
    and to the same recipients, which the recipients then see as superseded; once only."""
    sender, earlier_mid = routing["sender"], uuid.UUID(routing["supersedes"])
    earlier = await repository.by_sender_mid(session, sender, earlier_mid)
    if earlier is None:
        raise CorrectionUnknown(f"{sender} sent no message {earlier_mid}")
    if earlier.purged_at is not None:
        raise Purged(f"message {earlier_mid} was purged under the agreement's retention")
    if earlier.agreement_id != routing["agreement"]:
        raise CorrectionAgreementDiffers(
            f"message {earlier_mid} was sent under {earlier.agreement_id}, not "
            f"{routing['agreement']}"
        )
    before, now = sorted(earlier.routing["recipients"]), sorted(routing["recipients"])
    if before != now:
        raise CorrectionRecipientsDiffer(
            f"message {earlier_mid} went to {', '.join(before)}; a correction goes to the same "
            "recipients (send a new alert to others)"
        )
    later = await repository.superseded_by(session, sender, earlier_mid)
    if later is not None and str(later) != routing["mid"]:
        raise AlreadySuperseded(f"message {earlier_mid} was corrected by {later}: correct that")


class FeedbackNotRecipient(BrokerError, code="scope.feedback_not_recipient"): ...


class FeedbackWrongAddress(BrokerError, code="scope.feedback_wrong_recipient"): ...


class FeedbackOtherAgreement(BrokerError, code="scope.feedback_other_agreement"): ...


@dataclass(frozen=True)
class Outcome:
    """What the router returns: a receipt (201 new, 200 replay) or a recorded refusal."""

    status: int
    receipt: Receipt | None = None
    refusal: BrokerError | None = None


def _routing_errors(exc: schemas.SchemaError) -> list[FieldProblem]:
    return [FieldProblem(pointer="/routing" + e.pointer, detail=e.message) for e in exc.errors]


def _check_time(routing: dict[str, Any], now: datetime) -> None:
    t = int(now.timestamp())
    iat, exp = routing["iat"], routing["exp"]
    if not t - IAT_PAST_S <= iat <= t + IAT_FUTURE_S:
        raise IatOutOfWindow(f"iat {iat} is outside [{t - IAT_PAST_S}, {t + IAT_FUTURE_S}]")
    if not (exp > t and iat < exp <= iat + MAX_TTL_S):
        raise BadExpiry(f"exp must be after now and at most {MAX_TTL_S} s after iat")


async def _check_feedback(session: AsyncSession, routing: dict[str, Any]) -> None:
    alert_mid = uuid.UUID(routing["in_reply_to"])
    _feedback_rule(routing, await repository.received_alerts(session, routing["sender"], alert_mid))


def _feedback_rule(routing: dict[str, Any], received: list[tuple[str, str]]) -> None:
    """Feedback answers an alert its sender received: `received` is its (sender, agreement)s."""
    alert_mid = uuid.UUID(routing["in_reply_to"])
    if not received:
        raise FeedbackNotRecipient(f"{routing['sender']} did not receive alert {alert_mid}")
    alert_sender, alert_agreement = received[0]
    if routing["recipients"] != [alert_sender]:
        raise FeedbackWrongAddress(f"feedback on {alert_mid} goes to {alert_sender} only")
    if routing["agreement"] != alert_agreement:
        raise FeedbackOtherAgreement(f"alert {alert_mid} was sent under {alert_agreement}")


def _recipient_keys(snap: Snapshot, recipients: list[str], now: datetime) -> dict[str, list[str]]:
    """Each recipient's currently valid encryption keys, oldest first."""
    usable = {r: [k.kid for k in snap.encryption_keys(r) if k.usable_at(now)] for r in recipients}
    if missing := [r for r, kids in usable.items() if not kids]:
        raise RecipientNoKey(f"no valid encryption key for {missing}")
    return usable


def _decide(snap: Snapshot, routing: dict[str, Any], now: datetime) -> str:
    decision = scope.decide(snap.policy(routing), routing, now)
    if isinstance(decision, scope.Reject):
        raise OutOfScope(decision.detail, code=decision.code)
    return decision.policy_sha256


def _receipt(message: repository.Accepted) -> Receipt:
    return Receipt(
        mid=message.mid,
        receipt=message.receipt,
        envelope_sha256=message.envelope_sha256,
        accepted_at=message.received_at,
        event_id=message.event_id,
        log_index=None,
    )


async def submit(
    session: AsyncSession, caller: Caller, envelope: str, idempotency_key: str | None
) -> Outcome:
    """Verify, check scope, store and enqueue one envelope; record any refusal."""
    now = utcnow()
    digest = sha256_b64u(envelope.encode("utf-8"))
    verified: dict[str, Any] = {}
    try:
        return await _accept(session, caller, envelope, idempotency_key, now, digest, verified)
    except (CryptoError, BrokerError) as exc:
        refusal = _refusal(exc)
    await session.rollback()  # nothing of the refused submit may persist except its audit event
    await audit.record(
        session,
        "msg.rejected",
        actor=caller.actor,
        subject=verified.get("sender"),
        details=_refusal_details(refusal, digest, verified),
    )
    return Outcome(status=refusal.status_code, refusal=refusal)


def _refusal(exc: CryptoError | BrokerError) -> BrokerError:
    if isinstance(exc, CryptoError):
        return Refused(exc)
    return exc


def _refusal_details(refusal: BrokerError, digest: str, verified: dict[str, Any]) -> dict[str, Any]:
    return {"reason": refusal.code, "envelope_sha256": digest, **verified}


@dataclass(frozen=True, slots=True)
class _Verified:
    """An envelope past steps 1-6 and the Idempotency-Key check."""

    routing: dict[str, Any]
    jwe: dict[str, Any]
    kid: str
    mid: uuid.UUID


def _verify(
    snap: Snapshot,
    caller: Caller,
    token: env.SplitToken,
    idempotency_key: str | None,
    now: datetime,
    verified: dict[str, Any],
) -> _Verified:
    """Steps 3-6 of PROTOCOL 4.4 and the Idempotency-Key header (steps 1-2 made `token`)."""
    # 3. The key: a signing key of a focal point, active and valid now.
    key = snap.signing_key(token.kid, now)
    kid = key.kid
    # 4-5. Signature over the received bytes, then the strict parse of what was verified.
    outer = env.verify_outer(token, key.public or key.jwk)
    # From here a refusal names the signer (authenticated), never the sender the routing claims.
    verified.update(sender=key.agency_id, sender_fp=key.focal_point_id)
    routing = outer.routing
    try:
        schemas.validate_routing(routing)
    except schemas.SchemaError as exc:
        raise BadRouting("the routing header is invalid", errors=_routing_errors(exc)) from exc
    # 6. Sender binding: key owner, routing, and the authenticated focal point agree.
    if routing["sender"] != key.agency_id or (
        key.focal_point_id and routing["sender_fp"] != key.focal_point_id
    ):
        raise SenderMismatch(f"key {kid} belongs to {key.focal_point_id or key.agency_id}")
    verified.update(
        mid=routing["mid"],
        sender=routing["sender"],
        sender_fp=routing["sender_fp"],
        recipients=routing["recipients"],
        agreement=routing["agreement"],
        offence=routing["offence"],
        operation=routing["operation"],
        kind=routing["kind"],
    )
    if caller.focal_point_id != routing["sender_fp"]:
        raise NotTheSigner(
            f"you are {caller.focal_point_id}, the envelope is from {routing['sender_fp']}"
        )
    # 7, first half: the Idempotency-Key header must name the mid.
    mid = uuid.UUID(routing["mid"])
    if idempotency_key is None:
        raise MissingIdempotencyKey("send Idempotency-Key: <mid>")
    if idempotency_key.strip().lower() != str(mid):
        raise IdempotencyKeyMismatch(f"Idempotency-Key {idempotency_key!r} is not the mid {mid}")
    return _Verified(routing, outer.jwe, kid, mid)


def _time_and_scope(snap: Snapshot, routing: dict[str, Any], now: datetime) -> str:
    """Steps 8 and 9 (but for feedback's look-up): returns the policy's hash."""
    _check_time(routing, now)
    return _decide(snap, routing, now)


def _check_jwe(snap: Snapshot, v: _Verified, now: datetime) -> None:
    """Step 10: the JWE's shape and one entry per recipient with a currently valid key."""
    env.check_jwe_structure(v.jwe, _recipient_keys(snap, v.routing["recipients"], now))


async def _accept(
    session: AsyncSession,
    caller: Caller,
    envelope: str,
    idempotency_key: str | None,
    now: datetime,
    digest: str,
    verified: dict[str, Any],
) -> Outcome:
    cfg = settings()
    # 1-2. Limits and header, before any lookup.
    token = env.split_outer(envelope, cfg.max_envelope_bytes)
    # The registry as of now (no query while it is unchanged): keys, scope.
    snap = await registry.current(session)
    v = _verify(snap, caller, token, idempotency_key, now, verified)
    routing, sender = v.routing, v.routing["sender"]
    # 7. Idempotency and replay: (sender, mid) is unique forever. On PostgreSQL this
    # transaction holds the (sender, mid) lock from here until it ends.
    locked, existing = await repository.lock_and_find(session, sender, v.mid)
    if not locked:
        raise _in_flight(v.mid)
    if existing is not None:
        return _replay(existing, sender, v.mid, digest)
    # 8-9. Time window; scope, against the agreement version in force.
    policy_sha256 = _time_and_scope(snap, routing, now)
    if routing["kind"] == "feedback":
        await _check_feedback(session, routing)
    if "supersedes" in routing:
        await _check_correction(session, routing)
    # 10. The JWE.
    _check_jwe(snap, v, now)
    # 11. Accept: one transaction for message, deliveries, audit event and outbox.
    message, event, receipt = _rows(caller, envelope, v, digest, policy_sha256, now)
    try:
        await repository.add_accepted(session, message, routing["recipients"])
    except IntegrityError:
        # The same (sender, mid) committed after our look-up's snapshot: answer as step 7 would.
        await session.rollback()
        existing = await repository.accepted(session, sender, v.mid)
        if existing is None:
            if "supersedes" in routing:  # another correction of it committed first
                await _check_correction(session, routing)
            raise
        return _replay(existing, sender, v.mid, digest)
    await audit.record_many(session, [event])  # and the sequencer runs after the commit
    crash_point("submit.before_commit")
    jobs.after_commit(session, jobs.RELAY)
    return Outcome(status=201, receipt=receipt)


def _in_flight(mid: uuid.UUID) -> BrokerError:
    return InFlight(
        f"message {mid} is being accepted by another request", headers={"Retry-After": "1"}
    )


def _replay(existing: repository.Accepted, sender: str, mid: uuid.UUID, digest: str) -> Outcome:
    """The same envelope again gets the original receipt; another one under its mid, 422."""
    if existing.envelope_sha256 == digest:
        return Outcome(status=200, receipt=_receipt(existing))
    raise MidReused(f"{sender} already sent a different message {mid}")


def _rows(
    caller: Caller,
    envelope: str,
    v: _Verified,
    digest: str,
    policy_sha256: str,
    now: datetime,
) -> tuple[repository.NewMessage, audit.NewEvent, Receipt]:
    """The message row, its `msg.accepted` event and the signed receipt."""
    routing, kid, mid = v.routing, v.kid, v.mid
    details = {
        "mid": str(mid),
        "kind": routing["kind"],
        "sender": routing["sender"],
        "sender_fp": routing["sender_fp"],
        "sender_kid": kid,
        "recipients": routing["recipients"],
        "agreement": routing["agreement"],
        "operation": routing["operation"],
        "offence": routing["offence"],
        "subject_types": routing["subject_types"],
        "handling": routing["handling"],
        "envelope_sha256": digest,
        "policy_sha256": policy_sha256,
    }
    if routing["kind"] == "feedback":
        details.update(
            {
                k: routing[k]
                for k in ("in_reply_to", "outcome", "commodity", "quantity_band")
                if k in routing
            }
        )
    if "supersedes" in routing:
        details["supersedes"] = routing["supersedes"]
    event = audit.event(
        "msg.accepted", actor=caller.actor, subject=routing["sender"], details=details, at=now
    )
    receipt = sign_receipt(mid, routing["sender"], digest, now, event.id)
    message = repository.NewMessage(
        id=new_id(),
        sender=routing["sender"],
        mid=mid,
        kind=routing["kind"],
        sender_fp=routing["sender_fp"],
        sender_kid=kid,
        agreement_id=routing["agreement"],
        operation_id=routing["operation"],
        offence=routing["offence"],
        handling=routing["handling"],
        routing=routing,
        in_reply_to=uuid.UUID(routing["in_reply_to"]) if routing.get("in_reply_to") else None,
        supersedes=uuid.UUID(routing["supersedes"]) if routing.get("supersedes") else None,
        envelope=envelope,
        envelope_sha256=digest,
        policy_sha256=policy_sha256,
        receipt=receipt,
        event_id=event.id,
        iat=routing["iat"],
        exp=routing["exp"],
        received_at=now,
    )
    return (
        message,
        event,
        Receipt(
            mid=mid,
            receipt=receipt,
            envelope_sha256=digest,
            accepted_at=now,
            event_id=event.id,
            log_index=None,
        ),
    )


def sign_receipt(
    mid: uuid.UUID, sender: str, digest: str, now: datetime, event_id: uuid.UUID
) -> str:
    """The broker's signed promise to log the envelope within the merge delay (a receipt)."""
    keys = keyring.load_or_create()
    return env.sign_compact(
        {
            "v": 1,
            "mid": str(mid),
            "sender": sender,
            "envelope_sha256": digest,
            "accepted_at": epoch_ms(now),
            "event_id": str(event_id),
            "log_origin": keys.log_origin,
            "max_merge_delay_ms": MAX_MERGE_DELAY_MS,
        },
        keys.receipt,
        env.TYP_RECEIPT,
    )


async def check(session: AsyncSession, caller: Caller, routing: dict[str, Any]) -> CheckOut:
    """Dry run of the scope decision for a routing header, before the officer encrypts."""
    now = utcnow()
    try:
        try:
            schemas.validate_routing(routing)
        except schemas.SchemaError as exc:
            raise BadRouting("the routing header is invalid", errors=_routing_errors(exc)) from exc
        if caller.focal_point_id != routing["sender_fp"] or caller.agency_id != routing["sender"]:
            raise NotTheSigner(
                f"you are {caller.focal_point_id}; routing names {routing['sender_fp']}"
            )
        snap = await registry.current(session)
        policy_sha256 = _decide(snap, routing, now)
        if routing["kind"] == "feedback":
            await _check_feedback(session, routing)
        if "supersedes" in routing:
            await _check_correction(session, routing)
        keys = _recipient_keys(snap, routing["recipients"], now)
    except BrokerError as exc:
        return CheckOut(decision="reject", code=exc.code, detail=exc.detail)
    newest = {agency: kids[-1] for agency, kids in keys.items()}
    return CheckOut(decision="accept", policy_sha256=policy_sha256, recipient_keys=newest)


async def status(session: AsyncSession, caller: Caller, mid: uuid.UUID) -> MessageStatus:
    """Delivery and acknowledgement per recipient; only the sender agency may look.

    Each delivery carries the recipient's signed acknowledgement as it sent it, where the log
    recorded it, and the mids of the recipient's feedback on this message (docs/protocol.md,
    "Message status and evidence of receipt").
    """
    if caller.agency_id is None:
        raise NotFound(f"no message {mid}")
    message = await repository.by_sender_mid(session, caller.agency_id, mid)
    if message is None:
        raise NotFound(f"no message {mid}")
    if message.purged_at is not None:
        raise Purged(
            f"message {mid} was purged at {message.purged_at.isoformat()} under the "
            "agreement's retention; the log keeps its leaves"
        )
    deadline = await _ack_deadline(session, message)
    deliveries = await repository.deliveries_of(session, message.id)
    log_index = await repository.leaf_index(session, message.event_id)
    ack_leaves = await repository.ack_leaves(session, deliveries)
    feedback: dict[str, list[uuid.UUID]] = {}
    for sender, feedback_mid in await repository.feedback_to(
        session, message.sender, message.mid, [d.recipient for d in deliveries]
    ):
        feedback.setdefault(sender, []).append(feedback_mid)
    now = utcnow()
    no_leaf = repository.AckLeaf(None, None, None)
    superseded_by = await repository.superseded_by(session, message.sender, message.mid)
    # Imported here: recalls build on this module (receipts, durations).
    from broker.recalls.service import recall_status

    return MessageStatus(
        supersedes=message.supersedes,
        superseded_by=superseded_by,
        recall=await recall_status(session, message),
        mid=message.mid,
        kind=message.kind,
        sender=message.sender,
        sender_fp=message.sender_fp,
        agreement=message.agreement_id,
        operation=message.operation_id,
        offence=message.offence,
        received_at=message.received_at,
        envelope_sha256=message.envelope_sha256,
        log_index=log_index,
        deliveries=[
            DeliveryStatus(
                recipient=d.recipient,
                state=d.state,
                available_at=d.available_at,
                fetched_at=d.fetched_at,
                acked_at=d.acked_at,
                expired_at=d.expired_at,
                ack_status=d.ack_status,
                ack_reason=d.ack_reason,
                overdue=d.acked_at is None
                and d.state != "expired"
                and deadline is not None
                and now > message.received_at + deadline,
                ack=d.ack,
                ack_sha256=d.ack_sha256,
                **_ack_leaf(ack_leaves.get(d.ack_sha256 or "", no_leaf)),
                feedback=feedback.get(d.recipient, []),
            )
            for d in deliveries
        ],
    )


def _ack_leaf(found: repository.AckLeaf) -> dict[str, Any]:
    """The status fields of an acknowledgement's log leaf (a focal point cannot read leaves)."""
    return {
        "ack_log_index": found.leaf_index,
        "ack_logged_at": found.logged_at,
        "ack_leaf": base64.b64encode(found.leaf).decode() if found.leaf is not None else None,
    }


async def overdue(session: AsyncSession, caller: Caller, limit: int) -> OverduePage:
    """The caller's agency's copies not acknowledged by their deadline: urgent ones first
    (their deadline is the shorter `ack_deadline_urgent`), then the longest overdue."""
    from broker.agreements import repository as agreement_repo

    agency = caller.agency_id
    if agency is None:
        return OverduePage(items=[])
    now = utcnow()
    items: list[OverdueItem] = []
    for version in await agreement_repo.current_versions(session):
        if agency not in version.document["parties"]:
            continue
        for urgent in (True, False):
            deadline = ack_deadline(version.document, urgent=urgent)
            if deadline is None:
                continue
            rows = await repository.unacknowledged(
                session, agency, version.agreement_id, now - deadline, urgent=urgent, limit=limit
            )
            items += [
                OverdueItem(
                    mid=mid,
                    recipient=recipient,
                    agreement=version.agreement_id,
                    priority=str(routing.get("priority", "routine")),
                    received_at=received_at,
                    due_at=received_at + deadline,
                )
                for mid, recipient, routing, received_at in rows
            ]
    items.sort(key=lambda i: (i.priority != "urgent", i.due_at, str(i.mid), i.recipient))
    return OverduePage(items=items[:limit])


async def _ack_deadline(session: AsyncSession, message: Message) -> timedelta | None:
    from broker.agreements import repository as agreement_repo

    version = await agreement_repo.current_version(session, message.agreement_id)
    if version is None:
        return None
    return ack_deadline(version.document, urgent=message.routing.get("priority") == "urgent")


def ack_deadline(agreement: dict[str, Any], *, urgent: bool) -> timedelta | None:
    """The agreement's acknowledgement deadline; for an urgent message its shorter
    `ack_deadline_urgent` when it has one."""
    if urgent and agreement.get("ack_deadline_urgent"):
        return parse_duration(agreement["ack_deadline_urgent"])
    return parse_duration(agreement.get("ack_deadline"))


def parse_duration(value: str | None) -> timedelta | None:
    """ISO 8601 durations as agreements use them: PnD, PTnH, PTnM (and combinations)."""
    import re

    if not value:
        return None
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", value)
    if m is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
