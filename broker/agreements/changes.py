"""Agreement changes the parties approve (issue 19): proposals, signed approvals, restrictions.

An agreement is a treaty between its parties, so nobody widens it alone:

- **Propose.** The operator's administrator, or the registrar of a party to the current
  version, proposes a new version (the full document, checked as any version is). It is
  stored with its JCS hash, the version it changes (`base_version`) and an expiry
  (`agreement_proposal_ttl_days`). A new proposal *supersedes* an open one on the same
  agreement: the parties approve a hash, so no approval is ever applied to a document it did
  not sign, and a registrar who wants another text need not wait for the first to lapse; the
  new proposal's leaf names the one it superseded.
- **Approve.** Each party's registrar posts an `agreement-approval+jws` signed with a signing
  key of its agency (PROTOCOL: `docs/protocol.md`, "Agreement approvals"). The approvers are
  the base version's parties and any party the proposal adds; the version takes effect when
  `quorum` of the base version's parties (all of them, or its `approval_quorum` when it has
  more than two parties: the rules in force govern their own change) and every joining party
  have approved, at that approval, as `update_agreement` applies it (`agreement.updated`).
  An approval is recorded once per agency: the same agency again gets the proposal as it is.
- **Lapse.** An open proposal past its expiry is closed by the lifecycle sweep
  (`expire_proposals`); an approval after its expiry is refused either way (410). A proposal
  whose base version is no longer current (another version took effect, a restriction) can
  never take effect (409).
- **Restrict.** A party's registrar suspends the agreement, or excludes offences in its own
  direction, at once: narrowing needs nobody's consent. Lifting either is a widening, hence a
  proposal.

Each step is a leaf: `agreement.proposed`, `agreement.approved`, `agreement.proposal_expired`,
`agreement.restricted`; every new version keeps its own `agreement.updated` with its hash.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agreements import repository
from broker.agreements.models import AgreementApproval, AgreementProposal, AgreementVersion
from broker.agreements.schemas import ApprovalOut, ProposalOut, RestrictionIn
from broker.agreements.service import (
    IdMismatch,
    _check_agreement,
    get_agreement,
    history,
    policy_hash,
    update_agreement,
)
from broker.audit import service as audit
from broker.auth.service import Caller, Role
from broker.config import settings
from broker.crypto import envelope as env
from broker.crypto.errors import CryptoError
from broker.crypto.keys import sha256_b64u
from broker.errors import (
    BrokerError,
    FieldProblem,
    InvalidRequest,
    NotFound,
    StatusUnchanged,
    exists,
)
from broker.ids import new_id, utcnow
from broker.registry import snapshot as registry
from broker.registry.signed import verified_statement

SWEEP_BATCH = 100


class NotParty(BrokerError, code="agreement.not_party"):
    """The caller's agency is not a party to the agreement (nor joining it by the proposal):
    a registrar proposes, approves, restricts and sees proposals only for its own agreements."""


class ProposalExpired(BrokerError, code="agreement.proposal_expired"):
    """The proposal passed its expiry without the approvals it needed: propose it again."""


class ProposalStale(BrokerError, code="agreement.proposal_stale"):
    """The proposal can no longer take effect: it was superseded or adopted, or the version it
    changes is no longer current (another version or a restriction took effect since)."""


class ApprovalInvalid(BrokerError, code="agreement.approval_invalid"):
    """The approval does not verify or does not match the proposal: a bad signature, a payload
    the schema refuses, or another agreement, proposal, agency or document hash."""


class ApprovalKeyNotParty(BrokerError, code="agreement.approval_key_not_party"):
    """The approval is signed with a key that is not a signing key of the approving agency."""


# --- who approves ----------------------------------------------------------------------------


def _parties(document: dict[str, Any]) -> list[str]:
    return list(document.get("parties") or [])


def quorum_of(base: dict[str, Any]) -> int:
    """Approvals needed from the base version's parties: all of two; of more, its
    `approval_quorum` when it names one."""
    parties = _parties(base)
    named = base.get("approval_quorum")
    if len(parties) > 2 and isinstance(named, int):
        return min(named, len(parties))
    return len(parties)


def _approvers(base: dict[str, Any], proposed: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(everyone who may approve, the joining parties among them)."""
    joining = sorted(set(_parties(proposed)) - set(_parties(base)))
    return sorted(set(_parties(base)) | set(joining)), joining


def _carried(base: dict[str, Any], proposed: dict[str, Any], approved: set[str]) -> bool:
    _, joining = _approvers(base, proposed)
    from_base = len(approved & set(_parties(base)))
    return from_base >= quorum_of(base) and set(joining) <= approved


def _agency_of(caller: Caller) -> str | None:
    return caller.agency_id if caller.role is Role.registrar else None


async def versions_for(
    session: AsyncSession, caller: Caller, agreement_id: str
) -> Sequence[AgreementVersion]:
    """Every version of `agreement_id`, oldest first: for the administrator, or for a party's
    registrar (the treaty's text, which a proposal rewrites whole)."""
    versions = await history(session, agreement_id)
    agency = _agency_of(caller)
    if caller.role is not Role.admin and agency not in _parties(versions[-1].document):
        raise NotParty(f"{agency} is not a party to {agreement_id}")
    return versions


# --- propose ---------------------------------------------------------------------------------


async def propose(
    session: AsyncSession,
    caller: Caller,
    agreement_id: str,
    document: dict[str, Any],
    *,
    actor: str | None = None,
) -> ProposalOut:
    """Store a proposed new version of `agreement_id`; it supersedes an open one. `actor`:
    how the log names the proposer when not `caller.actor` (the operator's CLI)."""
    actor = actor or caller.actor
    agreement = exists(
        await repository.lock_agreement(session, agreement_id), f"agreement {agreement_id!r}"
    )
    base = await _version(session, agreement_id, agreement.current_version)
    agency = _agency_of(caller)
    if caller.role is not Role.admin and (agency is None or agency not in _parties(base.document)):
        raise NotParty(f"{agency} is not a party to {agreement_id}")
    if document.get("id") != agreement_id:
        raise IdMismatch(f"document id {document.get('id')!r} != {agreement_id!r}")
    await _check_agreement(session, document)
    now = utcnow()
    superseded = []
    for other in await repository.open_proposals(session, agreement_id):
        other.status, other.closed_at = "superseded", now
        superseded.append(str(other.id))
    row = AgreementProposal(
        id=new_id(),
        agreement_id=agreement_id,
        base_version=base.version,
        document=document,
        policy_hash=policy_hash(document),
        status="open",
        proposed_by=actor,
        created_at=now,
        expires_at=now + timedelta(days=settings().agreement_proposal_ttl_days),
        closed_at=None,
        version=None,
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        "agreement.proposed",
        actor=actor,
        subject=agreement_id,
        details={
            "proposal": str(row.id),
            "base_version": base.version,
            "base_sha256": base.sha256,
            "policy_sha256": row.policy_hash,
            "status": document["status"],
            "expires_at": row.expires_at.isoformat(),
            "supersedes": superseded,
        },
    )
    return _out(row, base, [], agreement.current_version, now)


# --- approve ---------------------------------------------------------------------------------


async def approve(
    session: AsyncSession, caller: Caller, agreement_id: str, proposal_id: uuid.UUID, jws: str
) -> ProposalOut:
    """Record the caller's agency's signed approval; apply the version once it is carried.

    Refusals in this order: 404 (no such proposal of this agreement), 403 `agreement.not_party`,
    422 (the approval does not verify or match), then, for an agency not yet on record, 410
    `agreement.proposal_expired` and 409 `agreement.proposal_stale`.
    """
    agreement = exists(
        await repository.lock_agreement(session, agreement_id), f"agreement {agreement_id!r}"
    )
    row = await repository.proposal(session, proposal_id, lock=True)
    if row is None or row.agreement_id != agreement_id:
        raise NotFound(f"no proposal {proposal_id} of {agreement_id}")
    base = await _version(session, agreement_id, row.base_version)
    approvers, _ = _approvers(base.document, row.document)
    agency = caller.agency_id
    if caller.role is not Role.registrar or agency is None or agency not in approvers:
        raise NotParty(f"{agency} is neither a party to {agreement_id} nor joining it")
    now = utcnow()
    kid = _verified_approval(await registry.current(session), agency, row, jws, now)
    recorded = list(await repository.approvals(session, [row.id]))
    if any(a.agency_id == agency for a in recorded):  # the first approval stands
        return _out(row, base, recorded, agreement.current_version, now)
    if row.status == "expired" or now >= row.expires_at:
        raise ProposalExpired(f"proposal {row.id} expired at {row.expires_at.isoformat()}")
    if row.status != "open" or row.base_version != agreement.current_version:
        raise ProposalStale(
            f"proposal {row.id} is {row.status} on version {row.base_version};"
            f" version {agreement.current_version} is current"
        )
    approval = AgreementApproval(
        proposal_id=row.id,
        agency_id=agency,
        jws=jws,
        sha256=sha256_b64u(jws.encode()),
        kid=kid,
        approved_by=caller.actor,
        approved_at=now,
    )
    session.add(approval)
    await session.flush()
    recorded.append(approval)
    approved = {a.agency_id for a in recorded}
    await audit.record(
        session,
        "agreement.approved",
        actor=caller.actor,
        subject=agreement_id,
        details={
            "proposal": str(row.id),
            "agency": agency,
            "policy_sha256": row.policy_hash,
            "approval_sha256": approval.sha256,
            "kid": kid,
            "approvals": len(approved),
        },
    )
    if _carried(base.document, row.document, approved):
        version = await update_agreement(session, agreement_id, row.document, actor=caller.actor)
        row.status, row.closed_at, row.version = "adopted", now, version.version
    return _out(row, base, recorded, agreement.current_version, now)


def _verified_approval(
    snap: registry.Snapshot, agency: str, row: AgreementProposal, jws: str, now: datetime
) -> str:
    """The approval's key id: signed now by a key of `agency`, for exactly this proposal."""
    try:
        payload, kid = verified_statement(
            snap,
            jws,
            env.TYP_AGREEMENT_APPROVAL,
            now=now,
            agency=agency,
            schema="agreement-approval",
            member="approval",
            what="approval",
            not_signer=ApprovalKeyNotParty,
            invalid=ApprovalInvalid,
        )
    except CryptoError as exc:
        raise ApprovalInvalid(f"the approval does not verify ({exc.code}: {exc.detail})") from exc
    said = (payload["agreement"], payload["proposal"], payload["agency"])
    if said != (row.agreement_id, str(row.id), agency):
        raise ApprovalInvalid(
            f"the approval is {payload['agency']}'s of proposal {payload['proposal']} of"
            f" {payload['agreement']}, not {agency}'s of {row.id} of {row.agreement_id}"
        )
    if payload["policy_sha256"] != row.policy_hash:
        raise ApprovalInvalid(
            f"the approval signs {payload['policy_sha256']}, the proposed version is"
            f" {row.policy_hash}",
            errors=[FieldProblem(pointer="/approval/policy_sha256", detail="not the proposal's")],
        )
    return kid


# --- see -------------------------------------------------------------------------------------


async def proposals(session: AsyncSession, caller: Caller, agreement_id: str) -> list[ProposalOut]:
    """The agreement's proposals, oldest first: all of them for the administrator and a
    party's registrar; for a joining party's registrar, those that name its agency."""
    agreement = await get_agreement(session, agreement_id)
    versions = {v.version: v for v in await repository.versions(session, agreement_id)}
    current = versions[agreement.current_version]
    rows = await repository.proposals(session, agreement_id)
    agency = _agency_of(caller)
    if caller.role is not Role.admin and agency not in _parties(current.document):
        rows = [
            r
            for r in rows
            if agency in _approvers(versions[r.base_version].document, r.document)[0]
        ]
        if not rows:
            raise NotParty(f"{agency} is not a party to {agreement_id}")
    recorded = await repository.approvals(session, [r.id for r in rows])
    now = utcnow()
    return [
        _out(
            r,
            versions[r.base_version],
            [a for a in recorded if a.proposal_id == r.id],
            agreement.current_version,
            now,
        )
        for r in rows
    ]


# --- lapse -----------------------------------------------------------------------------------


async def expire_proposals(session: AsyncSession, now: datetime | None = None) -> int:
    """Close open proposals past their expiry (the lifecycle sweep); returns how many."""
    now = now or utcnow()
    lapsed = await repository.lapsed_proposals(session, now, SWEEP_BATCH)
    for row in lapsed:
        row.status, row.closed_at = "expired", now
        await audit.record(
            session,
            "agreement.proposal_expired",
            actor="broker:lifecycle",
            subject=row.agreement_id,
            details={
                "proposal": str(row.id),
                "base_version": row.base_version,
                "policy_sha256": row.policy_hash,
                "expires_at": row.expires_at.isoformat(),
            },
        )
    await session.flush()
    return len(lapsed)


# --- restrict --------------------------------------------------------------------------------


async def restrict(
    session: AsyncSession, caller: Caller, agreement_id: str, data: RestrictionIn
) -> AgreementVersion:
    """Narrow the agreement at once for the caller's agency: suspend it, or exclude offences
    from its agency to one partner. Returns the new version."""
    agreement = exists(
        await repository.lock_agreement(session, agreement_id), f"agreement {agreement_id!r}"
    )
    current = await _version(session, agreement_id, agreement.current_version)
    agency = caller.agency_id
    if caller.role is not Role.registrar or agency not in _parties(current.document):
        raise NotParty(f"{agency} is not a party to {agreement_id}")
    document = dict(current.document)
    if data.action == "suspend":
        if document["status"] == "suspended":
            raise StatusUnchanged(f"{agreement_id} is already suspended")
        document["status"] = "suspended"
        detail: dict[str, Any] = {}
    else:
        document["exclusions"], detail = _excluded(current.document, agency, data)
    version = await update_agreement(session, agreement_id, document, actor=caller.actor)
    await audit.record(
        session,
        "agreement.restricted",
        actor=caller.actor,
        subject=agreement_id,
        details={
            "action": data.action,
            "agency": agency,
            "version": version.version,
            "base_sha256": current.sha256,
            "policy_sha256": version.sha256,
            "note": data.reason,
            **detail,
        },
    )
    return version


def _excluded(
    document: dict[str, Any], agency: str, data: RestrictionIn
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The exclusions with the new one from `agency`, and what the leaf says of it."""
    missing = [
        FieldProblem(pointer=f"/{name}", detail="required to exclude")
        for name in ("to", "offences")
        if getattr(data, name) is None
    ]
    if missing:
        raise _invalid("an exclusion names its partner and offences", missing)
    to, offences = data.to or "", sorted(set(data.offences or []))
    if to == agency or to not in _parties(document):
        raise _invalid(
            f"{to} is not another party to {document['id']}",
            [FieldProblem(pointer="/to", detail="not a partner")],
        )
    exclusions = [dict(e) for e in document.get("exclusions") or []]
    barred = {
        o
        for e in exclusions
        if e["from"] == agency and e["to"] == to and not e.get("unless_assurance")
        for o in e["offences"]
    }
    if set(offences) <= barred:
        raise StatusUnchanged(f"{', '.join(offences)} from {agency} to {to} are already excluded")
    exclusions.append(
        {
            "from": agency,
            "to": to,
            "offences": offences,
            "reason": data.reason,
            "unless_assurance": False,
        }
    )
    return exclusions, {"to": to, "offences": offences}


def _invalid(detail: str, errors: list[FieldProblem]) -> BrokerError:
    return InvalidRequest(detail, errors=errors)


# --- shapes ----------------------------------------------------------------------------------


async def _version(session: AsyncSession, agreement_id: str, version: int) -> AgreementVersion:
    return exists(
        await session.get(AgreementVersion, (agreement_id, version)),
        f"version {version} of {agreement_id}",
    )


def _status(row: AgreementProposal, current_version: int, now: datetime) -> str:
    if row.status == "open" and now >= row.expires_at:
        return "expired"
    if row.status == "open" and row.base_version != current_version:
        return "stale"
    return row.status


def _out(
    row: AgreementProposal,
    base: AgreementVersion,
    recorded: Sequence[AgreementApproval],
    current_version: int,
    now: datetime,
) -> ProposalOut:
    approvers, joining = _approvers(base.document, row.document)
    return ProposalOut(
        id=row.id,
        agreement_id=row.agreement_id,
        base_version=row.base_version,
        policy_sha256=row.policy_hash,
        status=_status(row, current_version, now),
        proposed_by=row.proposed_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        closed_at=row.closed_at,
        version=row.version,
        approvers=approvers,
        joining=joining,
        quorum=quorum_of(base.document),
        approvals=[
            ApprovalOut(
                agency=a.agency_id,
                approved_by=a.approved_by,
                approved_at=a.approved_at,
                kid=a.kid,
                approval_sha256=a.sha256,
            )
            for a in recorded
        ],
        document=row.document,
        base_document=base.document,
    )
