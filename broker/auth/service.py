"""Principals, roles and API tokens (random, shown once, stored as an HMAC, expiring)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies import repository as agency_repo
from broker.audit import service as audit
from broker.auth import repository
from broker.auth.models import Credential, Principal
from broker.config import settings
from broker.errors import (
    DuplicateId,
    Forbidden,
    ForeignAgency,
    InvalidRequest,
    PrincipalSuspended,
    StatusUnchanged,
    Unauthenticated,
    exists,
)
from broker.errors import TokenExpired as TokenExpired
from broker.errors import TokenRevoked as TokenRevoked
from broker.ids import new_id, utcnow

TOKEN_PREFIX = "brk_"  # noqa: S105 - a recognisable prefix, not a secret
# Where `authenticate` leaves the registry stamp it read (`registry.snapshot` looks there).
REGISTRY_STAMP = "registry_stamp"


class Role(StrEnum):
    focal_point = "focal_point"
    agency = "agency"
    auditor = "auditor"
    admin = "admin"
    # An agency's own administrator: its focal points, designations, keys and principals.
    registrar = "registrar"


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated principal and what it is bound to."""

    principal_id: uuid.UUID
    name: str
    role: Role
    agency_id: str | None = None
    focal_point_id: str | None = None
    audit_agencies: frozenset[str] | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"{self.role.value}:{self.name}"

    def oversees(self, agency_id: str) -> bool:
        """Whether an auditor's binding covers `agency_id`."""
        return self.role is Role.auditor and (
            self.audit_agencies is None or agency_id in self.audit_agencies
        )


def confinement(caller: Caller) -> str | None:
    """The agency a caller's registry changes are confined to: a registrar's own, None for the
    operator's administrator (the role gate admits no one else to registry changes)."""
    return caller.agency_id if caller.role is Role.registrar else None


def check_within(within: str | None, agency_id: str | None, what: str) -> None:
    """403 `auth.foreign_agency` unless `agency_id` is the confining agency (or none)."""
    if within is not None and agency_id != within:
        raise ForeignAgency(f"{what} is not of {within}: a registrar administers its own agency")


def filter_within(caller: Caller, agency_id: str | None) -> str | None:
    """The agency a registry listing shows: a registrar its own (403 naming another), the
    administrator what it asked for (None: every agency)."""
    within = confinement(caller)
    check_within(within, agency_id or within, f"agency {agency_id}")
    return within or agency_id


def hash_token(token: str) -> str:
    """HMAC-SHA-256 under the server pepper: a slow KDF adds nothing for 256-bit tokens."""
    pepper = settings().token_pepper.encode()
    return hmac.new(pepper, token.encode(), hashlib.sha256).hexdigest()


async def authenticate(session: AsyncSession, token: str | None) -> Caller:
    """Resolve a bearer token to its caller, or raise 401 with a precise code.

    The same statement reads the registry stamp, kept in `session.info` for the registry
    snapshot (`registry.snapshot.current`): one round trip fewer on every submit.
    """
    token = check_token_format(token)
    # No cache in front of this query: a revoked token must fail on its next request.
    found, session.info[REGISTRY_STAMP] = await repository.token_and_stamp(
        session, hash_token(token)
    )
    return caller_of(found)


def check_token_format(token: str | None) -> str:
    """The checks before any look-up; returns the token (401 if it cannot be one of ours)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        raise Unauthenticated("a bearer token (brk_...) is required")
    return token


def caller_of(found: repository.TokenRow | None, now: datetime | None = None) -> Caller:
    """The caller for a looked-up token row, or 401 with a precise code."""
    if found is None:
        raise Unauthenticated("unknown token")
    now = now or utcnow()
    if found.revoked_at is not None:
        raise TokenRevoked("this token was revoked")
    if found.expires_at <= now:
        raise TokenExpired("this token has expired")
    if found.status != "active":
        raise Unauthenticated("this principal is disabled")
    # A suspended binding refuses the token without revoking it: reactivation restores it.
    if found.agency_status not in (None, "active"):
        raise PrincipalSuspended(f"agency {found.agency_id} is suspended")
    if found.focal_point_status not in (None, "active"):
        raise PrincipalSuspended(f"focal point {found.focal_point_id} is suspended")
    return Caller(
        principal_id=found.principal_id,
        name=found.name,
        role=Role(found.role),
        agency_id=found.agency_id,
        focal_point_id=found.focal_point_id,
        audit_agencies=(
            frozenset(found.audit_agencies) if found.audit_agencies is not None else None
        ),
    )


async def create_principal(
    session: AsyncSession,
    *,
    name: str,
    role: Role,
    actor: str,
    agency_id: str | None = None,
    focal_point_id: str | None = None,
    audit_agencies: list[str] | None = None,
    within: str | None = None,
) -> Principal:
    """Register a principal, checking that its binding fits its role; a registrar (`within`
    its agency) registers its own agency's focal-point and agency principals only."""
    if within is not None and role not in _REGISTRAR_MANAGES:
        raise Forbidden(f"a registrar may not create {role.value} principals: ask the operator")
    if await repository.principal_by_name(session, name) is not None:
        raise DuplicateId(f"principal {name!r} already exists")
    if role is Role.focal_point:
        fp = await agency_repo.focal_point(session, focal_point_id or "")
        if fp is None:
            raise InvalidRequest(
                f"focal_point role needs a registered focal point, got {focal_point_id!r}"
            )
        agency_id = fp.agency_id
        check_within(within, agency_id, f"focal point {focal_point_id}")
    elif role in (Role.agency, Role.registrar):
        check_within(within, agency_id, f"agency {agency_id}")
        if agency_id is None or await agency_repo.agency(session, agency_id) is None:
            raise InvalidRequest(f"{role.value} role needs a registered agency, got {agency_id!r}")
        focal_point_id = None
    elif role is Role.auditor:
        for aid in audit_agencies or []:
            if await agency_repo.agency(session, aid) is None:
                raise InvalidRequest(f"unknown agency {aid!r} in the auditor's binding")
        agency_id = focal_point_id = None
    else:
        agency_id = focal_point_id = audit_agencies = None
    principal = Principal(
        id=new_id(),
        name=name,
        role=role.value,
        agency_id=agency_id,
        focal_point_id=focal_point_id,
        audit_agencies=sorted(audit_agencies) if audit_agencies is not None else None,
        status="active",
        created_at=utcnow(),
    )
    session.add(principal)
    await session.flush()
    await audit.record(
        session,
        "admin.changed",
        actor=actor,
        subject=f"principal:{name}",
        details={"action": "principal.created", "role": role.value, "agency": agency_id},
    )
    return principal


async def issue_token(
    session: AsyncSession, principal: Principal, *, actor: str, ttl_days: int | None = None
) -> tuple[Credential, str]:
    """Create a token for `principal` (found `within` the caller's reach by
    `principal_by_name`); the secret is returned once and never stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    credential = Credential(
        id=new_id(),
        principal_id=principal.id,
        prefix=secret[:12],
        token_hash=hash_token(secret),
        created_at=now,
        expires_at=now + timedelta(days=ttl_days or settings().token_ttl_days),
        revoked_at=None,
    )
    session.add(credential)
    await session.flush()
    await audit.record(
        session,
        "token.issued",
        actor=actor,
        subject=f"principal:{principal.name}",
        details={"credential": str(credential.id), "expires_at": credential.expires_at.isoformat()},
    )
    return credential, secret


async def revoke_token(
    session: AsyncSession, credential_id: uuid.UUID, *, actor: str, within: str | None = None
) -> Credential:
    """Revoke a token; it stops working on the next request."""
    credential = exists(
        await repository.credential(session, credential_id), f"token {credential_id}"
    )
    if within is not None:
        _reachable(await repository.principal(session, credential.principal_id), within)
    if credential.revoked_at is None:
        credential.revoked_at = utcnow()
        await audit.record(
            session, "token.revoked", actor=actor, subject=f"credential:{credential_id}"
        )
    return credential


async def set_principal_status(
    session: AsyncSession,
    name: str,
    status: str,
    *,
    reason: str,
    actor: str,
    within: str | None = None,
) -> Principal:
    """Disable a principal ('disabled': its tokens stop working at once) or enable it again.

    Not idempotent on purpose: asking for the status it already has is 409
    `registry.status_unchanged`, and nothing is logged (the log holds changes only).
    """
    principal = await principal_by_name(session, name, within=within)
    if principal.status == status:
        raise StatusUnchanged(f"principal {name!r} is already {status}")
    await repository.set_status(session, principal, status)
    await audit.record(
        session,
        "principal.disabled" if status == "disabled" else "principal.enabled",
        actor=actor,
        subject=f"principal:{name}",
        details={"role": principal.role, "note": reason}
        | ({"agency": principal.agency_id} if principal.agency_id else {}),
    )
    return principal


async def list_principals(
    session: AsyncSession, *, agency_id: str | None = None
) -> Sequence[Principal]:
    return await repository.list_principals(session, agency_id=agency_id)


async def principal_by_name(
    session: AsyncSession, name: str, *, within: str | None = None
) -> Principal:
    """The principal named `name`; `within` a registrar's agency, only one it manages."""
    principal = exists(await repository.principal_by_name(session, name), f"principal {name!r}")
    if within is not None:
        _reachable(principal, within)
    return principal


# What a registrar manages: its own agency's officers and inboxes; registrars, auditors and
# administrators are the operator's.
_REGISTRAR_MANAGES = (Role.focal_point, Role.agency)


def _reachable(principal: Principal | None, within: str) -> None:
    if principal is None:
        return
    check_within(within, principal.agency_id, f"principal {principal.name!r}")
    if Role(principal.role) not in _REGISTRAR_MANAGES:
        raise Forbidden(f"{principal.role} principals are managed by the operator")
