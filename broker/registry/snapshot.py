"""An in-process snapshot of the registry for the submit path, checked once per request.

A submit needs the sender's key, the agreement version in force, the operation, the focal
point's status and designations, and every recipient's encryption keys: six queries and their
ORM rows per request, for data that changes a few times a day. `current(session)` instead
compares one short value, the registry stamp (`registry_state`, changed by database triggers in
the same transaction as every registry write), and reuses the snapshot loaded under that
stamp. Authentication reads the stamp with the token, in the same statement, and leaves it in
`session.info["registry_stamp"]`: an unchanged registry then costs no query at all. A
revocation, a new agreement version or a suspended focal point therefore takes effect with the
first request that starts after its commit, exactly as with direct queries.

Ordering: the stamp is read before the tables, so a snapshot is never older than its stamp
(under READ COMMITTED a later statement sees at least what an earlier one saw). A snapshot
loaded inside a transaction that itself changed the registry carries that transaction's own
stamp, which nobody else sees unless it commits (stamps are random, never reused); that is why
a load reads the stamp again instead of trusting the one authentication read.

Time-dependent rules (key validity, designations, agreement and operation windows) are
evaluated per request against the snapshot: only the rows are cached, never a decision.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies.models import Agency, FocalPoint
from broker.agreements.models import Agreement, AgreementVersion, Designation, Operation
from broker.agreements.policy import Designation as PolicyDesignation
from broker.agreements.policy import Policy
from broker.auth.service import REGISTRY_STAMP
from broker.crypto.errors import CryptoError, WrongUse
from broker.crypto.keys import PublicJWK, parse_public_jwk
from broker.directory.models import PublicKey
from broker.errors import BrokerError
from broker.registry.models import RegistryState


class UnknownKey(BrokerError, code="key.unknown"): ...


class KeyRevoked(BrokerError, code="key.revoked"): ...


class KeyRetired(BrokerError, code="key.retired"): ...


class KeyNotValidNow(BrokerError, code="key.not_valid_now"): ...


@dataclass(frozen=True, slots=True)
class DirectoryKey:
    """A key row as the submit path needs it, with its public key parsed once."""

    kid: str
    agency_id: str
    focal_point_id: str | None
    use: str
    jwk: Mapping[str, Any]
    not_before: datetime
    not_after: datetime
    status: str
    revocation_reason: str | None
    public: PublicJWK | None  # None if the stored JWK does not parse (verify will say why)

    def usable_at(self, moment: datetime) -> bool:
        """Active and inside its validity window at `moment`."""
        return self.status == "active" and self.not_before <= moment < self.not_after


@dataclass(frozen=True)
class Snapshot:
    """The registry rows that scope and key checks read, under one stamp."""

    stamp: str | None
    keys: Mapping[str, DirectoryKey] = field(default_factory=dict)
    enc_keys: Mapping[str, tuple[DirectoryKey, ...]] = field(default_factory=dict)
    agreements: Mapping[str, tuple[Mapping[str, Any], str]] = field(default_factory=dict)
    operations: Mapping[str, tuple[Mapping[str, Any], str]] = field(default_factory=dict)
    # Focal point id -> its effective status: "active" only if its agency is active too.
    focal_points: Mapping[str, str] = field(default_factory=dict)
    designations: Mapping[tuple[str, str], tuple[PolicyDesignation, ...]] = field(
        default_factory=dict
    )

    def key(self, kid: str) -> DirectoryKey | None:
        return self.keys.get(kid)

    def signing_key(self, kid: str, now: datetime) -> DirectoryKey:
        """Key `kid` if it may sign at `now`: the one check for every signature the broker
        accepts (envelopes and acknowledgements alike, PROTOCOL 6.3).

        A signing key that is registered, not revoked, not retired and inside its validity
        window; each failure has its own code.
        """
        key = self.keys.get(kid)
        if key is None:
            raise UnknownKey(f"no key {kid} in the directory")
        if key.use != "sig":
            raise WrongUse(f"key {kid} is an encryption key")
        if key.status == "revoked":
            raise KeyRevoked(f"key {kid} was revoked ({key.revocation_reason})")
        if key.status == "retired":
            raise KeyRetired(f"key {kid} is retired")
        if not key.not_before <= now < key.not_after:
            raise KeyNotValidNow(f"key {kid} is valid from {key.not_before} to {key.not_after}")
        return key

    def encryption_keys(self, agency_id: str) -> tuple[DirectoryKey, ...]:
        """An agency's encryption keys, oldest first."""
        return self.enc_keys.get(agency_id, ())

    def policy(self, routing: Mapping[str, Any]) -> Policy:
        """What `policy.decide` needs for this routing header."""
        agreement = self.agreements.get(routing["agreement"])
        op_id = routing.get("operation")
        operation = self.operations.get(op_id) if op_id else None
        fp_status = self.focal_points.get(routing["sender_fp"])
        return Policy(
            agreement=agreement[0] if agreement else None,
            agreement_sha256=agreement[1] if agreement else "",
            operation=operation[0] if operation else None,
            operation_sha256=operation[1] if operation else "",
            designations=self.designations.get((routing["sender_fp"], routing["agreement"]), ()),
            focal_point_active=fp_status == "active",
        )


def _parsed(jwk: Mapping[str, Any], use: str) -> PublicJWK | None:
    try:
        return parse_public_jwk(jwk, use="sig" if use == "sig" else "enc")
    except CryptoError:
        return None


async def read_stamp(session: AsyncSession) -> str | None:
    """The registry stamp as this transaction sees it (None: the row was deleted)."""
    return await session.scalar(select(RegistryState.stamp).where(RegistryState.id == 1))


async def load(session: AsyncSession, stamp: str | None) -> Snapshot:
    """Read the registry tables (columns only, no ORM identities) into a snapshot."""
    keys: dict[str, DirectoryKey] = {}
    enc: dict[str, list[DirectoryKey]] = {}
    k = PublicKey
    for row in await session.execute(
        select(
            k.kid,
            k.agency_id,
            k.focal_point_id,
            k.use,
            k.jwk,
            k.not_before,
            k.not_after,
            k.status,
            k.revocation_reason,
        ).order_by(k.created_at, k.kid)
    ):
        entry = DirectoryKey(
            kid=row.kid,
            agency_id=row.agency_id,
            focal_point_id=row.focal_point_id,
            use=row.use,
            jwk=row.jwk,
            not_before=row.not_before,
            not_after=row.not_after,
            status=row.status,
            revocation_reason=row.revocation_reason,
            public=_parsed(row.jwk, row.use),
        )
        keys[entry.kid] = entry
        if entry.use == "enc":
            enc.setdefault(entry.agency_id, []).append(entry)
    agreements = {
        agreement_id: (document, sha256)
        for agreement_id, document, sha256 in await session.execute(
            select(
                AgreementVersion.agreement_id, AgreementVersion.document, AgreementVersion.sha256
            )
            .join(Agreement, Agreement.id == AgreementVersion.agreement_id)
            .where(AgreementVersion.version == Agreement.current_version)
        )
    }
    operations = {
        op_id: (document, sha256)
        for op_id, document, sha256 in await session.execute(
            select(Operation.id, Operation.document, Operation.sha256)
        )
    }
    # A focal point is active only while its agency is too: a suspended agency's focal points
    # are all `scope.focal_point_inactive` (the agency's own status shows as "suspended").
    focal_points = {
        fp_id: status if agency_status == "active" else "suspended"
        for fp_id, status, agency_status in await session.execute(
            select(FocalPoint.id, FocalPoint.status, Agency.status).join(
                Agency, Agency.id == FocalPoint.agency_id
            )
        )
    }
    designations: dict[tuple[str, str], list[PolicyDesignation]] = {}
    for fp, agreement_id, valid_from, valid_until in await session.execute(
        select(
            Designation.focal_point_id,
            Designation.agreement_id,
            Designation.valid_from,
            Designation.valid_until,
        ).order_by(Designation.focal_point_id, Designation.valid_from)
    ):
        designations.setdefault((fp, agreement_id), []).append(
            PolicyDesignation(valid_from, valid_until)
        )
    return Snapshot(
        stamp=stamp,
        keys=keys,
        enc_keys={agency: tuple(entries) for agency, entries in enc.items()},
        agreements=agreements,
        operations=operations,
        focal_points=focal_points,
        designations={pair: tuple(ds) for pair, ds in designations.items()},
    )


_cached: list[Snapshot] = []
# One loader at a time per event loop: after a registry change every request would reload.
_loaders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _cached_under(stamp: str | None) -> Snapshot | None:
    found = next(iter(_cached), None)  # safe against a concurrent `clear`
    return found if found is not None and stamp is not None and found.stamp == stamp else None


def _loader() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _loaders.get(loop)
    if lock is None:
        lock = _loaders[loop] = asyncio.Lock()
    return lock


async def current(session: AsyncSession) -> Snapshot:
    """The registry as of now, for this session's transaction: no query while unchanged."""
    if REGISTRY_STAMP in session.info:
        found = _cached_under(session.info[REGISTRY_STAMP])
        if found is not None:
            return found
    # Read again rather than load under authentication's stamp: this transaction may have
    # changed the registry since, and a snapshot must carry the stamp of what it loaded.
    stamp = await read_stamp(session)
    found = _cached_under(stamp)
    if found is not None:
        return found
    async with _loader():
        found = _cached_under(stamp)  # loaded by another request meanwhile
        if found is not None:
            return found
        snapshot = await load(session, stamp)
        if stamp is not None:  # no stamp row (an emptied table): never cache
            _cached[:] = [snapshot]
        return snapshot


def clear() -> None:
    """Forget the cached snapshot (tests; the stamp makes this unnecessary in service)."""
    _cached.clear()
