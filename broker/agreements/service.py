"""Agreements as versioned policy documents, operations that narrow them, designations."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import schemas
from broker.agencies import repository as agency_repo
from broker.agreements import repository
from broker.agreements.models import Agreement, AgreementVersion, Designation, Operation
from broker.agreements.policy import Policy, assured
from broker.agreements.schemas import (
    AgreementView,
    DesignationEndIn,
    DesignationIn,
    DesignationView,
    Direction,
)
from broker.audit import service as audit
from broker.auth.service import Caller
from broker.crypto.jcs import canonical
from broker.errors import BrokerError, DuplicateId, FieldProblem, StatusUnchanged, exists
from broker.ids import new_id, utcnow
from broker.registry import snapshot as registry
from broker.schemas import vocab


class InvalidDocument(BrokerError, code="registry.invalid_document"): ...


class UnknownParty(BrokerError, code="registry.unknown_party"): ...


class UnknownOffence(BrokerError, code="registry.unknown_offence"): ...


class UnknownSubjectType(BrokerError, code="registry.unknown_subject_type"): ...


class UnknownAgreement(BrokerError, code="registry.unknown_agreement"): ...


class NotAParty(BrokerError, code="registry.not_a_party"): ...


class BadValidity(BrokerError, code="registry.bad_validity"): ...


class ValidityOverlap(BrokerError, code="registry.validity_overlap"): ...


class IdMismatch(BrokerError, code="registry.id_mismatch"): ...


def policy_hash(document: dict[str, Any]) -> str:
    """base64url SHA-256 of the RFC 8785 canonical document (what the log records)."""
    digest = hashlib.sha256(canonical(document)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _validate(name: str, document: dict[str, Any]) -> None:
    try:
        schemas.validate(name, document)
    except schemas.SchemaError as exc:
        raise InvalidDocument(
            f"the {name} document is invalid ({len(exc.errors)} problem(s))",
            errors=[FieldProblem(pointer=e.pointer, detail=e.message) for e in exc.errors],
        ) from exc


async def _check_agreement(session: AsyncSession, doc: dict[str, Any]) -> None:
    """Specific codes for the mistakes registrars make, then the full schema."""
    parties = doc.get("parties") or []
    for i, party in enumerate(parties):
        if not isinstance(party, str) or await agency_repo.agency(session, party) is None:
            raise UnknownParty(
                f"party {party!r} is not a registered agency",
                errors=[FieldProblem(pointer=f"/parties/{i}", detail="unknown agency")],
            )
    for i, offence in enumerate(doc.get("offences") or []):
        if offence not in vocab.OFFENCES:
            raise UnknownOffence(
                f"offence {offence!r} is not in the vocabulary",
                errors=[FieldProblem(pointer=f"/offences/{i}", detail="unknown offence code")],
            )
    for i, kind in enumerate(doc.get("subject_types") or []):
        if kind not in vocab.SUBJECT_TYPES:
            raise UnknownSubjectType(
                f"subject type {kind!r} is not in the vocabulary",
                errors=[FieldProblem(pointer=f"/subject_types/{i}", detail="unknown subject type")],
            )
    for i, excl in enumerate(doc.get("exclusions") or []):
        for end in ("from", "to"):
            if isinstance(excl, dict) and excl.get(end) not in parties:
                raise UnknownParty(
                    f"exclusion {end} {excl.get(end)!r} is not a party",
                    errors=[FieldProblem(pointer=f"/exclusions/{i}/{end}", detail="not a party")],
                )
    for i, party in enumerate(doc.get("receive_only") or []):
        if party not in parties:
            raise UnknownParty(
                f"receive-only {party!r} is not a party",
                errors=[FieldProblem(pointer=f"/receive_only/{i}", detail="not a party")],
            )
    _validate("agreement", doc)
    until = doc.get("valid_until")
    if until is not None and until < doc["valid_from"]:
        raise BadValidity(
            "valid_until is before valid_from",
            errors=[FieldProblem(pointer="/valid_until", detail="before valid_from")],
        )
    quorum = doc.get("approval_quorum")
    if quorum is not None and quorum > len(parties):
        raise InvalidDocument(
            f"approval_quorum {quorum} exceeds the {len(parties)} parties",
            errors=[FieldProblem(pointer="/approval_quorum", detail="more than the parties")],
        )


async def create_agreement(
    session: AsyncSession, document: dict[str, Any], *, actor: str
) -> AgreementVersion:
    """Register an agreement with its first policy version."""
    await _check_agreement(session, document)
    if await repository.agreement(session, document["id"]) is not None:
        raise DuplicateId(f"agreement {document['id']!r} already exists")
    now = utcnow()
    session.add(
        Agreement(
            id=document["id"],
            current_version=1,
            status=document["status"],
            created_at=now,
            updated_at=now,
        )
    )
    await session.flush()
    return await _add_version(session, document, 1, actor=actor)


async def update_agreement(
    session: AsyncSession, agreement_id: str, document: dict[str, Any], *, actor: str
) -> AgreementVersion:
    """Store a new version of the policy; earlier versions stay for re-deriving decisions.

    Internal: what an approved proposal or a restriction applies (`broker.agreements.changes`)
    and set-up code calls; over HTTP nobody changes an agreement alone.
    """
    agreement = await get_agreement(session, agreement_id)
    if document.get("id") != agreement_id:
        raise IdMismatch(f"document id {document.get('id')!r} != {agreement_id!r}")
    await _check_agreement(session, document)
    agreement.current_version += 1
    agreement.status = document["status"]
    agreement.updated_at = utcnow()
    return await _add_version(session, document, agreement.current_version, actor=actor)


async def _add_version(
    session: AsyncSession, document: dict[str, Any], version: int, *, actor: str
) -> AgreementVersion:
    digest = policy_hash(document)
    row = AgreementVersion(
        agreement_id=document["id"],
        version=version,
        document=document,
        sha256=digest,
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        "agreement.updated",
        actor=actor,
        subject=document["id"],
        details={"version": version, "policy_sha256": digest, "status": document["status"]},
    )
    return row


async def get_agreement(session: AsyncSession, agreement_id: str) -> Agreement:
    return exists(await repository.agreement(session, agreement_id), f"agreement {agreement_id!r}")


async def current(session: AsyncSession, agreement_id: str) -> AgreementVersion:
    return exists(
        await repository.current_version(session, agreement_id), f"agreement {agreement_id!r}"
    )


async def list_current(session: AsyncSession) -> Sequence[AgreementVersion]:
    return await repository.current_versions(session)


async def history(session: AsyncSession, agreement_id: str) -> Sequence[AgreementVersion]:
    await get_agreement(session, agreement_id)
    return await repository.versions(session, agreement_id)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


async def _check_operation(session: AsyncSession, doc: dict[str, Any]) -> AgreementVersion:
    _validate("operation", doc)
    version = await repository.current_version(session, doc["agreement"])
    if version is None:
        raise UnknownAgreement(
            f"no agreement {doc['agreement']!r}",
            errors=[FieldProblem(pointer="/agreement", detail="unknown agreement")],
        )
    parties = version.document["parties"]
    for i, member in enumerate(doc["members"]):
        if member not in parties:
            raise NotAParty(
                f"{member!r} is not a party to {doc['agreement']}",
                errors=[FieldProblem(pointer=f"/members/{i}", detail="not a party")],
            )
    starts, ends = _parse_time(doc["starts_at"]), _parse_time(doc["ends_at"])
    agreement_from = datetime.combine(
        date.fromisoformat(version.document["valid_from"]), time(), UTC
    )
    until = version.document.get("valid_until")
    if starts >= ends:
        raise BadValidity(
            "an operation must end after it starts",
            errors=[FieldProblem(pointer="/ends_at", detail="not after starts_at")],
        )
    if starts < agreement_from or (until is not None and ends.date() > date.fromisoformat(until)):
        raise BadValidity(
            "the operation window lies outside the agreement's validity",
            errors=[FieldProblem(pointer="/starts_at", detail="outside the agreement's validity")],
        )
    coordinator = doc.get("coordinator")
    if coordinator is not None and coordinator not in doc["members"]:
        raise NotAParty(
            f"the coordinator {coordinator!r} is not a member of {doc['id']}",
            errors=[FieldProblem(pointer="/coordinator", detail="not a member")],
        )
    _check_phases(doc.get("phases") or [], starts, ends)
    return version


def _check_phases(phases: list[dict[str, Any]], starts: datetime, ends: datetime) -> None:
    """Phases lie inside the window, each ending after it starts, in order, without overlap.

    Every problem is reported at once, each at its field, so a registrar fixes them in one go.
    """
    problems: list[FieldProblem] = []
    names: set[str] = set()
    previous_end: datetime | None = None
    for i, phase in enumerate(phases):
        at = f"/phases/{i}"
        name = phase["name"]
        if name == "outside" or name in names:
            why = "reserved" if name == "outside" else "used by an earlier phase"
            problems.append(FieldProblem(pointer=f"{at}/name", detail=f"{name!r} is {why}"))
        names.add(name)
        p_starts, p_ends = _parse_time(phase["starts_at"]), _parse_time(phase["ends_at"])
        if p_starts >= p_ends:
            problems.append(FieldProblem(pointer=f"{at}/ends_at", detail="not after starts_at"))
        if p_starts < starts:
            problems.append(
                FieldProblem(pointer=f"{at}/starts_at", detail="before the operation starts")
            )
        if p_ends > ends:
            problems.append(
                FieldProblem(pointer=f"{at}/ends_at", detail="after the operation ends")
            )
        if previous_end is not None and p_starts < previous_end:
            problems.append(
                FieldProblem(
                    pointer=f"{at}/starts_at",
                    detail="before the previous phase ends (phases are in order, not overlapping)",
                )
            )
        previous_end = max(previous_end, p_ends) if previous_end is not None else p_ends
    if problems:
        raise BadValidity(
            f"the operation's phases are not valid ({len(problems)} problem(s))", errors=problems
        )


async def create_operation(
    session: AsyncSession, document: dict[str, Any], *, actor: str
) -> Operation:
    """Register an operation inside an agreement: a window and a membership."""
    await _check_operation(session, document)
    if await repository.operation(session, document["id"]) is not None:
        raise DuplicateId(f"operation {document['id']!r} already exists")
    now = utcnow()
    op = Operation(
        id=document["id"],
        agreement_id=document["agreement"],
        version=1,
        document=document,
        sha256=policy_hash(document),
        starts_at=_parse_time(document["starts_at"]),
        ends_at=_parse_time(document["ends_at"]),
        status=document["status"],
        created_at=now,
        updated_at=now,
    )
    session.add(op)
    await session.flush()
    await _record_operation(session, op, actor)
    return op


async def update_operation(
    session: AsyncSession, operation_id: str, document: dict[str, Any], *, actor: str
) -> Operation:
    """Change an operation's window, members or status (a new version)."""
    op = await get_operation(session, operation_id)
    if document.get("id") != operation_id or document.get("agreement") != op.agreement_id:
        raise IdMismatch("an operation keeps its id and agreement")
    await _check_operation(session, document)
    op.version += 1
    op.document, op.sha256, op.status = document, policy_hash(document), document["status"]
    op.starts_at, op.ends_at = _parse_time(document["starts_at"]), _parse_time(document["ends_at"])
    op.updated_at = utcnow()
    await _record_operation(session, op, actor)
    return op


async def _record_operation(session: AsyncSession, op: Operation, actor: str) -> None:
    await audit.record(
        session,
        "operation.updated",
        actor=actor,
        subject=op.id,
        details={
            "agreement": op.agreement_id,
            "version": op.version,
            "policy_sha256": op.sha256,
            "status": op.status,
        },
    )


async def get_operation(session: AsyncSession, operation_id: str) -> Operation:
    return exists(await repository.operation(session, operation_id), f"operation {operation_id!r}")


async def list_operations(session: AsyncSession) -> Sequence[Operation]:
    return await repository.operations(session)


async def designate(
    session: AsyncSession, focal_point_id: str, data: DesignationIn, *, actor: str
) -> Designation:
    """Designate a focal point under an agreement for a period (no overlapping periods)."""
    fp = exists(
        await agency_repo.focal_point(session, focal_point_id), f"focal point {focal_point_id!r}"
    )
    version = await repository.current_version(session, data.agreement)
    if version is None:
        raise UnknownAgreement(
            f"no agreement {data.agreement!r}",
            errors=[FieldProblem(pointer="/agreement", detail="unknown agreement")],
        )
    if fp.agency_id not in version.document["parties"]:
        raise NotAParty(f"{fp.agency_id} is not a party to {data.agreement}")
    if data.valid_until is not None and data.valid_until < data.valid_from:
        raise BadValidity(
            "valid_until is before valid_from",
            errors=[FieldProblem(pointer="/valid_until", detail="before valid_from")],
        )
    for other in await repository.designations(
        session, focal_point_id=focal_point_id, agreement_id=data.agreement
    ):
        if _overlaps(other.valid_from, other.valid_until, data.valid_from, data.valid_until):
            raise ValidityOverlap(
                f"{focal_point_id} is already designated under {data.agreement} from {other.valid_from}"
            )
    row = Designation(
        id=new_id(),
        focal_point_id=focal_point_id,
        agreement_id=data.agreement,
        valid_from=data.valid_from,
        valid_until=data.valid_until,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        "designation.changed",
        actor=actor,
        subject=focal_point_id,
        details={
            "agreement": data.agreement,
            "valid_from": str(data.valid_from),
            "valid_until": str(data.valid_until) if data.valid_until else None,
        },
    )
    return row


async def end_designation(
    session: AsyncSession,
    focal_point_id: str,
    agreement_id: str,
    data: DesignationEndIn,
    *,
    actor: str,
) -> Designation:
    """End the designation under `agreement_id` that covers `data.valid_until` on that day.

    Only shortens, never in the past: decisions already taken stand (to stop a focal point at
    once, suspend it). 404 if no designation covers the day; 409 `registry.status_unchanged`
    if it already ends that day. Logged as `designation.changed`, with the reason as `note`.
    """
    exists(
        await agency_repo.focal_point(session, focal_point_id), f"focal point {focal_point_id!r}"
    )
    day = data.valid_until
    if day < utcnow().date():
        raise BadValidity(
            "a designation cannot end in the past",
            errors=[FieldProblem(pointer="/valid_until", detail="before today (UTC)")],
        )
    found = [
        d
        for d in await repository.designations(
            session, focal_point_id=focal_point_id, agreement_id=agreement_id
        )
        if d.valid_from <= day and (d.valid_until is None or day <= d.valid_until)
    ]
    row = exists(
        found[0] if found else None,
        f"designation of {focal_point_id} under {agreement_id!r} covering {day}",
    )
    if row.valid_until == day:
        raise StatusUnchanged(f"the designation already ends on {day}")
    row.valid_until = day
    await session.flush()
    await audit.record(
        session,
        "designation.changed",
        actor=actor,
        subject=focal_point_id,
        details={
            "agreement": agreement_id,
            "valid_from": str(row.valid_from),
            "valid_until": str(day),
            "note": data.reason,
        },
    )
    return row


def _overlaps(a_from: date, a_until: date | None, b_from: date, b_until: date | None) -> bool:
    return (a_until is None or b_from <= a_until) and (b_until is None or a_from <= b_until)


async def designations(session: AsyncSession, focal_point_id: str) -> Sequence[Designation]:
    return await repository.designations(session, focal_point_id=focal_point_id)


async def views_for(session: AsyncSession, caller: Caller) -> list[AgreementView]:
    """For the caller's agency: each agreement it is party to, and what it may send to whom."""
    agency_id = caller.agency_id
    if agency_id is None:  # a principal of no agency is party to nothing
        return []
    today = utcnow().date()
    views = []
    for version in await repository.current_versions(session):
        doc = version.document
        if agency_id not in doc["parties"]:
            continue
        directions = []
        for partner in sorted(p for p in doc["parties"] if p != agency_id):
            excluded = [
                {
                    "offences": e["offences"],
                    "reason": e["reason"],
                    "unless_assurance": e.get("unless_assurance", False),
                    # Lifted by a recorded assurance, as the scope check (`decide`) lifts it.
                    "assured": sorted(
                        o for o in e["offences"] if assured(doc, agency_id, partner, o, today)
                    )
                    if e.get("unless_assurance")
                    else [],
                }
                for e in doc.get("exclusions", [])
                if e["from"] == agency_id and e["to"] == partner
            ]
            barred = {o for e in excluded for o in e["offences"] if o not in e["assured"]}
            directions.append(
                Direction(
                    to=partner,
                    offences=[o for o in doc["offences"] if o not in barred],
                    excluded=excluded,
                )
            )
        ops = [
            {
                "id": op.id,
                "starts_at": op.starts_at,
                "ends_at": op.ends_at,
                "members": op.document["members"],
                "status": op.status,
            }
            for op in await repository.operations(session, doc["id"])
            if agency_id in op.document["members"]
        ]
        ours = [
            d
            for d in await repository.designations(session, agreement_id=doc["id"])
            if d.focal_point_id.startswith(f"{agency_id}/")
        ]
        fps = [d.focal_point_id for d in ours]
        views.append(
            AgreementView(
                id=doc["id"],
                title=doc["title"],
                version=version.version,
                policy_sha256=version.sha256,
                status=doc["status"],
                valid_from=doc["valid_from"],
                valid_until=doc.get("valid_until"),
                subject_types=doc["subject_types"],
                max_handling=doc["max_handling"],
                onward_sharing=doc["onward_sharing"],
                directions=directions,
                operations=ops,
                designated_focal_points=sorted(set(fps)),
                designations=[
                    DesignationView(
                        focal_point_id=d.focal_point_id,
                        valid_from=d.valid_from,
                        valid_until=d.valid_until,
                    )
                    for d in ours
                ],
            )
        )
    return views


async def policy_for(session: AsyncSession, routing: dict[str, Any]) -> Policy:
    """Gather what `decide` needs for this routing header (the only I/O of a scope check).

    From the registry snapshot (broker/registry), which is checked against the registry's
    stamp on every call: one short query while nothing changed.
    """
    return (await registry.current(session)).policy(routing)
