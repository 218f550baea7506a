"""The key directory: register, rotate, retire and revoke public keys; publish the JWKS."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies import repository as agency_repo
from broker.audit import service as audit
from broker.crypto import errors as crypto_errors
from broker.crypto import keys as crypto_keys
from broker.directory import repository
from broker.directory.models import PublicKey
from broker.directory.schemas import KeyIn, RevokeIn, RotateIn
from broker.errors import (
    BrokerError,
    DuplicateId,
    FieldProblem,
    Refused,
    UnknownAgency,
    exists,
)
from broker.ids import utcnow

DEFAULT_LIFETIME = timedelta(days=365)


class KeyBinding(BrokerError, code="key.bad_binding"): ...


class KeyNotActive(BrokerError, code="key.not_active"): ...


class BadValidity(BrokerError, code="key.bad_validity"): ...


def _parse(jwk: dict[str, Any]) -> crypto_keys.PublicJWK:
    """The public key, or its crypto refusal (`key.wrong_curve`, `key.private_material`...)."""
    try:
        return crypto_keys.parse_public_jwk(jwk)
    except crypto_errors.CryptoError as exc:
        raise Refused(exc, errors=[FieldProblem(pointer="/jwk", detail=exc.detail)]) from exc


async def register(session: AsyncSession, data: KeyIn, *, actor: str) -> PublicKey:
    """Register a public key after strict validation; every key event is a log leaf."""
    parsed = _parse(data.jwk)
    if await agency_repo.agency(session, data.agency_id) is None:
        raise UnknownAgency(f"no agency {data.agency_id!r}")
    if data.focal_point_id is not None:
        fp = await agency_repo.focal_point(session, data.focal_point_id)
        if fp is None or fp.agency_id != data.agency_id:
            raise KeyBinding(f"{data.focal_point_id!r} is not a focal point of {data.agency_id}")
        if parsed.use != "sig":
            raise KeyBinding("encryption keys belong to the agency, not to a focal point")
    if await repository.key(session, parsed.kid) is not None:
        raise DuplicateId(f"key {parsed.kid} is already registered")
    now = utcnow()
    not_before = data.not_before or now
    not_after = data.not_after or not_before + DEFAULT_LIFETIME
    if not_after <= not_before:
        raise BadValidity("not_after must be later than not_before")
    key = PublicKey(
        kid=parsed.kid,
        agency_id=data.agency_id,
        focal_point_id=data.focal_point_id,
        use=parsed.use,
        jwk=parsed.jwk,
        not_before=not_before,
        not_after=not_after,
        status="active",
        created_at=now,
    )
    session.add(key)
    await session.flush()
    await audit.record(
        session, "key.registered", actor=actor, subject=key.kid, details=published(key)
    )
    return key


async def get(session: AsyncSession, kid: str) -> PublicKey:
    return exists(await repository.key(session, kid), f"key {kid!r}")


async def retire(session: AsyncSession, kid: str, *, actor: str) -> PublicKey:
    """Stop using a key for new messages; past signatures and decryptions stay valid."""
    key = await get(session, kid)
    if key.status != "active":
        raise KeyNotActive(f"key {kid} is {key.status}")
    key.status, key.retired_at = "retired", utcnow()
    await audit.record(session, "key.retired", actor=actor, subject=kid, details=published(key))
    return key


async def rotate(session: AsyncSession, kid: str, data: RotateIn, *, actor: str) -> PublicKey:
    """Register a successor for the same owner and retire the old key."""
    old = await get(session, kid)
    new = await register(
        session,
        KeyIn(
            agency_id=old.agency_id,
            focal_point_id=old.focal_point_id,
            jwk=data.jwk,
            not_after=data.not_after,
        ),
        actor=actor,
    )
    if new.use != old.use:
        raise KeyBinding(f"a {old.use} key must be rotated to a {old.use} key")
    await retire(session, kid, actor=actor)
    return new


async def revoke(session: AsyncSession, kid: str, data: RevokeIn, *, actor: str) -> PublicKey:
    """Revoke a key; with key_compromise, messages after `compromised_since` lose trust."""
    key = await get(session, kid)
    if key.status == "revoked":
        raise KeyNotActive(f"key {kid} is already revoked")
    now = utcnow()
    if data.reason == "key_compromise" and data.compromised_since is None:
        raise Refused(
            crypto_errors.InvalidKey("key_compromise needs compromised_since"),
            errors=[
                FieldProblem(pointer="/compromised_since", detail="required for key_compromise")
            ],
        )
    # Whatever the reason, trust in the key ends at compromised_since (crypto.keys): it is the
    # earliest time the key may have leaked, never a time still to come.
    if data.compromised_since is not None and data.compromised_since > now:
        raise BadValidity("compromised_since is in the future")
    key.status, key.revoked_at = "revoked", now
    key.revocation_reason = data.reason
    key.compromised_since = data.compromised_since
    await audit.record(session, "key.revoked", actor=actor, subject=kid, details=published(key))
    return key


async def list_keys(session: AsyncSession, *, agency_id: str | None = None) -> Sequence[PublicKey]:
    return await repository.keys(session, agency_id=agency_id)


def published(key: PublicKey) -> dict[str, Any]:
    """The JWK with directory metadata members (RFC 7517 §4: unknown members are ignored)."""
    meta: dict[str, Any] = {
        "agency": key.agency_id,
        "status": key.status,
        "nbf": int(key.not_before.timestamp()),
        "exp": int(key.not_after.timestamp()),
    }
    if key.focal_point_id:
        meta["focal_point"] = key.focal_point_id
    if key.revoked_at:
        meta["revoked_at"] = int(key.revoked_at.timestamp())
        meta["revocation_reason"] = key.revocation_reason
    if key.compromised_since:
        meta["compromised_since"] = int(key.compromised_since.timestamp())
    return {**key.jwk, "kid": key.kid, **meta}


async def jwks(
    session: AsyncSession, *, agency_id: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The public JWK Set with status, validity and revocation of every key."""
    return {"keys": [published(k) for k in await repository.keys(session, agency_id=agency_id)]}


async def usable_keys(
    session: AsyncSession, agency_id: str, use: str, at: datetime
) -> list[PublicKey]:
    """Keys of `agency_id` with `use` that are active and valid at `at`."""
    return [
        k for k in await repository.keys(session, agency_id=agency_id, use=use) if k.usable_at(at)
    ]
