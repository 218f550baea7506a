"""Recall: the sender withdraws a message; the recipients that hold it answer.

A focal point of the sender agency signs a `recall+jws` naming the message and a reason. In
one transaction the broker withdraws every copy not yet fetched (state `recalled`: never
served after), and carries the signed statement, unchanged, to the recipients that had fetched
one, as a recall notice in their inbox: a message of kind `recall` whose mid is the recall's
`rid`, delivered through the outbox like any other. Each of those recipients answers with a
signed `recall-compliance+jws` (`erased`, or `retained` on a legal ground) by the agreement's
`recall_deadline`; an answer still missing after it is overdue, for the sender's status, the
`broker_recall_answers_overdue` gauge and the auditors. A second recall of the same message
answers with the first one's result. Everything is on the log: `msg.recalled` and
`msg.recall_complied`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import schemas
from broker.agreements import repository as agreement_repo
from broker.audit import service as audit
from broker.auth.service import Caller
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from broker.errors import BrokerError, FieldProblem, NotFound
from broker.ids import epoch_ms, new_id, utcnow
from broker.messages import repository as messages_repo
from broker.messages.models import Message
from broker.messages.service import Purged, parse_duration, sign_receipt
from broker.recalls import repository
from broker.recalls.models import Recall, RecallRecipient
from broker.recalls.schemas import ComplianceOut, RecallOut, RecallRecipientOut
from broker.registry import snapshot as registry
from broker.registry.signed import verified_statement
from broker.registry.snapshot import Snapshot
from broker.schemas import vocab

# Without the agreement's `recall_deadline`, recipients have a week to answer.
DEFAULT_DEADLINE = timedelta(days=7)
# A notice lives as long as any message may (routing `exp`): it must reach a recipient that
# polls rarely.
NOTICE_TTL = timedelta(days=30)
UNFETCHED = ("queued", "available")
HELD = ("fetched", "acknowledged")


class NotSender(BrokerError, code="recall.not_sender"): ...


class BadRecall(BrokerError, code="recall.invalid"): ...


class RecallKeyNotSigner(BrokerError, code="recall.key_not_signer"): ...


class RidReused(BrokerError, code="recall.rid_reused"): ...


class BadCompliance(BrokerError, code="recall.bad_compliance"): ...


class ComplianceKeyNotOurs(BrokerError, code="recall.compliance_key_not_recipient"): ...


class AlreadyAnswered(BrokerError, code="recall.already_answered"): ...


def _problems(exc: schemas.SchemaError, member: str) -> list[FieldProblem]:
    return [FieldProblem(pointer=f"/{member}{e.pointer}", detail=e.message) for e in exc.errors]


def _verified_recall(
    snap: Snapshot, caller: Caller, mid: uuid.UUID, jws: str, now: datetime
) -> tuple[dict[str, Any], str]:
    """The recall's payload and its key id: signed now by the calling focal point's own key,
    for this message, in the caller's name."""
    payload, kid = verified_statement(
        snap,
        jws,
        env.TYP_RECALL,
        now=now,
        focal_point=caller.focal_point_id or "",
        schema="recall",
        member="recall",
        what="recall",
        not_signer=RecallKeyNotSigner,
        invalid=BadRecall,
    )
    said = (payload["mid"], payload["sender"], payload["sender_fp"])
    if said != (str(mid), caller.agency_id, caller.focal_point_id):
        raise BadRecall(
            f"the recall is {payload['sender_fp']}'s of {payload['mid']}, "
            f"not {caller.focal_point_id}'s of {mid}"
        )
    return payload, kid


async def recall(
    session: AsyncSession, caller: Caller, mid: uuid.UUID, jws: str
) -> tuple[RecallOut, bool]:
    """Recall the caller's agency's message `mid`; returns the result and whether it is new."""
    now = utcnow()
    snap = await registry.current(session)
    payload, kid = _verified_recall(snap, caller, mid, jws, now)
    assert caller.agency_id is not None
    message = await repository.message_for_recall(session, caller.agency_id, mid)
    if message is None:
        if await repository.someone_sent(session, mid):
            raise NotSender(f"only the agency that sent {mid} may recall it")
        raise NotFound(f"no message {mid}")
    if message.kind == "recall":
        raise BadRecall(f"{mid} is a recall notice; recall the message it names")
    if message.purged_at is not None:
        raise Purged(f"message {mid} was purged under the agreement's retention")
    earlier = await repository.recall_of(session, message.id)
    if earlier is not None:  # the first recall stands; a second one is answered with it
        return await _out(session, earlier, message, now), False
    rid = uuid.UUID(payload["rid"])
    if await messages_repo.by_sender_mid(session, message.sender, rid) is not None:
        raise RidReused(f"{rid} is already the mid of another message of {message.sender}")
    deliveries = await repository.lock_deliveries(session, message.id)
    withdrawn = [d for d in deliveries if d.state in UNFETCHED]
    notified = sorted(d.recipient for d in deliveries if d.state in HELD)
    await repository.withdraw(session, [d.id for d in withdrawn])
    version = await agreement_repo.current_version(session, message.agreement_id)
    window = parse_duration((version.document if version else {}).get("recall_deadline"))
    digest = sha256_b64u(jws.encode())
    details: dict[str, Any] = {
        "mid": str(mid),
        "rid": str(rid),
        "sender": message.sender,
        "reason": payload["reason"],
        "legal_reference": payload.get("legal_reference"),
        "recall_sha256": digest,
        "withdrawn": sorted(d.recipient for d in withdrawn),
        "notified": notified,
        "deadline_at": epoch_ms(now + (window or DEFAULT_DEADLINE)),
    }
    event = audit.event("msg.recalled", actor=caller.actor, subject=message.sender, details=details)
    await audit.record_many(session, [event])
    notice = await _notice(session, caller, message, payload, (jws, kid), notified, now)
    row = Recall(
        message_id=message.id,
        notice_id=notice,
        rid=rid,
        reason=payload["reason"],
        legal_reference=payload.get("legal_reference"),
        jws=jws,
        sha256=digest,
        recalled_by=caller.actor,
        recalled_at=now,
        deadline_at=now + (window or DEFAULT_DEADLINE),
        event_id=event.id,
    )
    session.add(row)
    await session.flush()
    session.add_all(
        [RecallRecipient(recall_id=row.id, recipient=d.recipient, outcome="withdrawn")
         for d in withdrawn]
        + [RecallRecipient(recall_id=row.id, recipient=r, outcome="notified") for r in notified]
    )  # fmt: skip
    await session.flush()
    return await _out(session, row, message, now), True


async def _notice(
    session: AsyncSession,
    caller: Caller,
    message: Message,
    payload: dict[str, Any],
    signed: tuple[str, str],
    recipients: list[str],
    now: datetime,
) -> uuid.UUID | None:
    """The recall notice for the recipients holding a copy: the signed statement (`signed`:
    the JWS and its key id) as the envelope of a message of kind `recall`, accepted in the
    sender's name and queued for them like any delivery."""
    if not recipients:
        return None
    jws, kid = signed
    rid = uuid.UUID(payload["rid"])
    digest = sha256_b64u(jws.encode())
    iat = int(now.timestamp())
    routing = {
        "v": 1,
        "kind": "recall",
        "mid": str(rid),
        "iat": iat,
        "exp": iat + int(NOTICE_TTL.total_seconds()),
        "sender": message.sender,
        "sender_fp": payload["sender_fp"],
        "recipients": recipients,
        "agreement": message.agreement_id,
        "operation": message.operation_id,
        "offence": message.offence,
        "priority": "urgent",  # a recall goes ahead of the backlog
        "handling": message.handling,
        "recalls": str(message.mid),
    }
    accepted = audit.event(
        "msg.accepted",
        actor=caller.actor,
        subject=message.sender,
        at=now,
        details={
            "mid": str(rid),
            "kind": "recall",
            "recalls": str(message.mid),
            "sender": message.sender,
            "sender_fp": payload["sender_fp"],
            "sender_kid": kid,
            "recipients": recipients,
            "agreement": message.agreement_id,
            "operation": message.operation_id,
            "offence": message.offence,
            "handling": message.handling,
            "envelope_sha256": digest,
            "policy_sha256": message.policy_sha256,
        },
    )
    await audit.record_many(session, [accepted])
    notice = messages_repo.NewMessage(
        id=new_id(),
        sender=message.sender,
        mid=rid,
        kind="recall",
        sender_fp=payload["sender_fp"],
        sender_kid=kid,
        agreement_id=message.agreement_id,
        operation_id=message.operation_id,
        offence=message.offence,
        handling=message.handling,
        routing=routing,
        in_reply_to=None,
        supersedes=None,
        envelope=jws,
        envelope_sha256=digest,
        policy_sha256=message.policy_sha256,
        receipt=sign_receipt(rid, message.sender, digest, now, accepted.id),
        event_id=accepted.id,
        iat=iat,
        exp=routing["exp"],
        received_at=now,
    )
    await messages_repo.add_accepted(session, notice, recipients)
    return notice.id


async def _out(session: AsyncSession, row: Recall, message: Message, now: datetime) -> RecallOut:
    return RecallOut(
        mid=message.mid,
        rid=row.rid,
        sender=message.sender,
        reason=row.reason,
        legal_reference=row.legal_reference,
        recalled_at=row.recalled_at,
        deadline_at=row.deadline_at,
        recall_sha256=row.sha256,
        recipients=[
            _recipient_out(r, row.deadline_at, now)
            for r in await repository.recipients(session, row.id)
        ],
    )


def _recipient_out(r: RecallRecipient, deadline_at: datetime, now: datetime) -> RecallRecipientOut:
    return RecallRecipientOut(
        recipient=r.recipient,
        outcome="withdrawn" if r.outcome == "withdrawn" else "notified",
        compliance=None if r.compliance is None else _compliance(r.compliance),
        legal_ground=r.legal_ground,
        complied_at=r.complied_at,
        overdue=overdue(r, deadline_at, now),
    )


def _compliance(value: str) -> vocab.ComplianceStatus:
    return "erased" if value == "erased" else "retained"


def overdue(r: RecallRecipient, deadline_at: datetime, now: datetime) -> bool:
    """A notified copy not answered by the deadline."""
    return r.outcome == "notified" and r.compliance is None and now > deadline_at


async def recall_status(session: AsyncSession, message: Message) -> RecallOut | None:
    """The message's recall as its sender's status shows it, if it was recalled."""
    row = await repository.recall_of(session, message.id)
    return None if row is None else await _out(session, row, message, utcnow())


# --- the recipients' answers ----------------------------------------------------------------


def _verified_compliance(
    snap: Snapshot, agency: str, mid: uuid.UUID, jws: str, now: datetime
) -> dict[str, Any]:
    """The answer's payload, signed now by a signing key of the recipient agency."""
    payload, _ = verified_statement(
        snap,
        jws,
        env.TYP_RECALL_COMPLIANCE,
        now=now,
        agency=agency,
        schema="recall-compliance",
        member="compliance",
        what="answer",
        not_signer=ComplianceKeyNotOurs,
        invalid=BadCompliance,
    )
    if payload["mid"] != str(mid):
        raise BadCompliance(f"the answer is for {payload['mid']}, not {mid}")
    return payload


async def comply(session: AsyncSession, caller: Caller, mid: uuid.UUID, jws: str) -> ComplianceOut:
    """Record a recipient's answer to the recall of `mid`: once; the same answer again is
    answered with the first, a different one is `recall.already_answered`."""
    agency = caller.agency_id
    assert agency is not None
    now = utcnow()
    snap = await registry.current(session)
    payload = _verified_compliance(snap, agency, mid, jws, now)
    found = await repository.notified_copy(session, agency, mid)
    if found is None:
        raise NotFound(f"no recall notice of {mid} in your inbox")
    row, copy, message = found
    if payload["rid"] != str(row.rid):
        raise BadCompliance(f"the answer names recall {payload['rid']}, not {row.rid}")
    digest = sha256_b64u(jws.encode())
    if copy.compliance is not None:
        if copy.compliance_sha256 != digest and (
            copy.compliance != payload["status"] or copy.legal_ground != payload.get("legal_ground")
        ):
            raise AlreadyAnswered(f"{agency} already answered {copy.compliance}")
        return _compliance_out(row, copy, mid)
    copy.compliance = payload["status"]
    copy.legal_ground = payload.get("legal_ground")
    copy.compliance_jws = jws
    copy.compliance_sha256 = digest
    copy.complied_at = now
    await audit.record(
        session,
        "msg.recall_complied",
        actor=caller.actor,
        subject=agency,
        details={
            "mid": str(mid),
            "rid": str(row.rid),
            "sender": message.sender,
            "recipient": agency,
            "status": payload["status"],
            "legal_ground": payload.get("legal_ground"),
            "compliance_sha256": digest,
            "late": now > row.deadline_at,
        },
    )
    return _compliance_out(row, copy, mid)


def _compliance_out(row: Recall, copy: RecallRecipient, mid: uuid.UUID) -> ComplianceOut:
    assert copy.compliance is not None
    assert copy.complied_at is not None
    return ComplianceOut(
        mid=mid,
        rid=row.rid,
        recipient=copy.recipient,
        compliance=_compliance(copy.compliance),
        legal_ground=copy.legal_ground,
        complied_at=copy.complied_at,
        late=copy.complied_at > row.deadline_at,
    )


async def overdue_answers(session: AsyncSession, now: datetime | None = None) -> dict[str, int]:
    """Notified copies not answered by their recall's deadline, per recipient (the gauge)."""
    return {
        recipient: int(count)
        for recipient, count in await repository.awaiting_since(session, now or utcnow())
    }
