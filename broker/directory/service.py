"""The key directory: register, rotate, retire and revoke public keys; publish the JWKS and
the broker-signed directory (PROTOCOL.md 6.2).

The signed directory is published lazily, when it is asked for: a new version whenever the key
set differs from the last one published (or the broker's signing key changed), or the last one
has lived half its lifetime. Otherwise the stored JWS is served unchanged, so every partner gets
the same bytes and can prove which directory it was shown. Publishing on demand rather than
inside each key change keeps one version per observed key set (a rotation is two changes) and
the key.* events exactly as they were; the next request after a change publishes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker import keyring
from broker.agencies import repository as agency_repo
from broker.audit import service as audit
from broker.auth import service as auth
from broker.crypto import envelope as env
from broker.crypto import errors as crypto_errors
from broker.crypto import jcs
from broker.crypto import keys as crypto_keys
from broker.directory import repository
from broker.directory.models import DirectoryVersion, PublicKey
from broker.directory.schemas import KeyIn, RevokeIn, RotateIn
from broker.errors import (
    BrokerError,
    DuplicateId,
    FieldProblem,
    InternalError,
    Refused,
    UnknownAgency,
    exists,
)
from broker.ids import utcnow

DEFAULT_LIFETIME = timedelta(days=365)
# A signed directory expires a day after it is issued and is re-issued after half of that, so
# a partner holding one never holds a directory older than its `expires_at` promises.
DIRECTORY_LIFETIME = timedelta(hours=24)
DIRECTORY_PUBLISHER = "broker:directory"
# Lost races before serving the newest directory as it stands (the next request catches up).
_PUBLISH_ATTEMPTS = 3


class KeyBinding(BrokerError, code="key.bad_binding"): ...


class KeyNotActive(BrokerError, code="key.not_active"): ...


class BadValidity(BrokerError, code="key.bad_validity"): ...


def _parse(jwk: dict[str, Any]) -> crypto_keys.PublicJWK:
    """The public key, or its crypto refusal (`key.wrong_curve`, `key.private_material`...)."""
    try:
        return crypto_keys.parse_public_jwk(jwk)
    except crypto_errors.CryptoError as exc:
        raise Refused(exc, errors=[FieldProblem(pointer="/jwk", detail=exc.detail)]) from exc


async def register(
    session: AsyncSession, data: KeyIn, *, actor: str, within: str | None = None
) -> PublicKey:
    """Register a public key after strict validation; every key event is a log leaf.

    `within`: the agency a registrar is confined to (`auth.confinement`); None for the
    administrator. The same for every change below.
    """
    auth.check_within(within, data.agency_id, f"agency {data.agency_id}")
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


async def get(session: AsyncSession, kid: str, *, within: str | None = None) -> PublicKey:
    key = exists(await repository.key(session, kid), f"key {kid!r}")
    auth.check_within(within, key.agency_id, f"key {kid}")
    return key


async def retire(
    session: AsyncSession, kid: str, *, actor: str, within: str | None = None
) -> PublicKey:
    """Stop using a key for new messages; past signatures and decryptions stay valid."""
    key = await get(session, kid, within=within)
    if key.status != "active":
        raise KeyNotActive(f"key {kid} is {key.status}")
    key.status, key.retired_at = "retired", utcnow()
    await audit.record(session, "key.retired", actor=actor, subject=kid, details=published(key))
    return key


async def rotate(
    session: AsyncSession, kid: str, data: RotateIn, *, actor: str, within: str | None = None
) -> PublicKey:
    """Register a successor for the same owner and retire the old key."""
    old = await get(session, kid, within=within)
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


async def revoke(
    session: AsyncSession, kid: str, data: RevokeIn, *, actor: str, within: str | None = None
) -> PublicKey:
    """Revoke a key; with key_compromise, messages after `compromised_since` lose trust."""
    key = await get(session, kid, within=within)
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


def _signer_kid(jws: str) -> str | None:
    """The kid in a stored directory's protected header (we wrote it: no checks needed)."""
    header = json.loads(crypto_keys.b64u_decode(jws.split(".", 1)[0]))
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _still_current(
    last: DirectoryVersion, keys_sha256: str, signer_kid: str, now: datetime
) -> bool:
    half_life = (last.expires_at - last.issued_at) / 2
    return (
        last.keys_sha256 == keys_sha256
        and now < last.issued_at + half_life
        and _signer_kid(last.jws) == signer_kid
    )


async def signed_directory(
    session: AsyncSession, *, now: datetime | None = None
) -> DirectoryVersion:
    """The directory to serve: the last one published, or a new version if it is out of date.

    Safe with several API workers: a version number is taken by inserting it, and a worker that
    loses the race reads the winner back and looks again. The last version is read before the
    keys, so a worker never publishes, above a version that holds a key change, a key set read
    before that change.
    """
    now = now or utcnow()
    signer = keyring.load_or_create().receipt
    last: DirectoryVersion | None = None
    for _ in range(_PUBLISH_ATTEMPTS):
        last = await repository.latest_version(session)
        keys = [published(k) for k in await repository.keys(session)]
        keys_sha256 = crypto_keys.sha256_b64u(jcs.canonical(keys))
        if last is not None and _still_current(last, keys_sha256, signer.kid, now):
            return last
        version = 1 if last is None else last.version + 1
        issued_at = now.replace(microsecond=0)
        expires_at = issued_at + DIRECTORY_LIFETIME
        payload = {
            "v": 1,
            "version": version,
            "issued_at": int(issued_at.timestamp()),
            "expires_at": int(expires_at.timestamp()),
            "keys": keys,
            "previous_sha256": None if last is None else last.sha256,
        }
        jws = env.sign_compact(payload, signer, env.TYP_DIRECTORY)
        sha256 = crypto_keys.sha256_b64u(jws.encode("ascii"))
        inserted = await repository.insert_version(
            session,
            version=version,
            sha256=sha256,
            keys_sha256=keys_sha256,
            jws=jws,
            issued_at=issued_at,
            expires_at=expires_at,
        )
        if inserted:
            await audit.record(
                session,
                "directory.published",
                actor=DIRECTORY_PUBLISHER,
                subject=f"directory:{version}",
                details={
                    "version": version,
                    "sha256": sha256,
                    "issued_at": payload["issued_at"],
                    "expires_at": payload["expires_at"],
                    "keys": len(keys),
                },
            )
            break
    # Published, or outraced every time (keys changing under us): the newest published one is
    # signed and unexpired, and the next request publishes what changed since.
    newest = await repository.latest_version(session)
    if newest is None:  # every attempt above inserted a version or found one
        raise InternalError("no key directory was published")
    return newest
