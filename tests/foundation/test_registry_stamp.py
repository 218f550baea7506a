"""The registry stamp: every registry write changes it, so the submit path's snapshot is fresh."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.agencies.models import Agency, FocalPoint
from broker.agreements.models import Agreement, AgreementVersion, Designation, Operation
from broker.agreements.policy import Policy
from broker.crypto.keys import SigningKey
from broker.directory import service as directory
from broker.directory.models import PublicKey
from broker.directory.schemas import KeyIn, RevokeIn
from broker.registry import snapshot
from broker.registry.models import REGISTRY_TABLES, RegistryState


def _stamp() -> str | None:
    return db.call(lambda s: s.scalar(select(RegistryState.stamp)))


def _sig_key(world: dict[str, Any], fp: str = "VN-GDC/fp-hcm-01") -> tuple[str, SigningKey]:
    key = SigningKey.generate()
    data = KeyIn(agency_id=fp.split("/")[0], focal_point_id=fp, jwk=key.public.jwk)
    db.call(directory.register, data, actor="t")
    return key.kid, key


def test_the_tables_are_the_registry() -> None:
    from broker.models import Base

    assert set(REGISTRY_TABLES) <= set(Base.metadata.tables)


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("agencies", update(Agency).where(Agency.id == "HK-CED").values(name="Hong Kong C&E")),
        ("focal_points", update(FocalPoint).values(status="suspended")),
        ("keys", update(PublicKey).values(status="revoked")),
        ("agreements", update(Agreement).values(status="suspended")),
        ("agreement_versions", update(AgreementVersion).values(created_by="x")),
        ("operations", update(Operation).values(status="suspended")),
        ("designations", delete(Designation)),
    ],
)
def test_every_registry_write_changes_the_stamp(
    world: dict[str, Any], table: str, change: Any
) -> None:
    _sig_key(world)  # so that the keys table has a row
    before = _stamp()
    assert before is not None
    db.call(lambda s: s.execute(change))
    after = _stamp()
    assert after is not None
    assert after != before, table


def test_other_writes_leave_it(world: dict[str, Any], token_for: Any) -> None:
    before = _stamp()
    token_for("admin")  # principals, credentials and audit events are not the registry
    assert _stamp() == before


def test_the_row_survives_deletion(world: dict[str, Any]) -> None:
    db.call(lambda s: s.execute(delete(RegistryState)))
    assert _stamp() is not None


def test_a_rolled_back_change_never_serves_later_requests(world: dict[str, Any]) -> None:
    kid, _ = _sig_key(world)

    async def revoke_and_roll_back(s: AsyncSession) -> str:
        await directory.revoke(s, kid, RevokeIn(reason="superseded"), actor="t")
        await s.flush()
        # Loaded inside the uncommitted transaction: it sees the revocation...
        status = (await snapshot.current(s)).keys[kid].status
        await s.rollback()
        return status

    assert db.call(revoke_and_roll_back) == "revoked"
    # ...but its stamp never commits, so the next transaction reloads.
    assert db.call(snapshot.current).keys[kid].status == "active"


def test_revocation_is_seen_by_the_next_transaction(world: dict[str, Any]) -> None:
    kid, _ = _sig_key(world)
    assert db.call(snapshot.current).keys[kid].usable_at(datetime.now(UTC))
    db.call(directory.revoke, kid, RevokeIn(reason="superseded"), actor="t")
    key = db.call(snapshot.current).keys[kid]
    assert key.status == "revoked"
    assert not key.usable_at(datetime.now(UTC))


def test_unchanged_registry_reuses_the_snapshot(world: dict[str, Any]) -> None:
    first = db.call(snapshot.current)
    assert db.call(snapshot.current) is first


def test_policy_matches_the_rows(world: dict[str, Any]) -> None:
    routing = {
        "agreement": "MEKONG-DRAGON",
        "operation": "MEKONG-DRAGON-V",
        "sender_fp": "VN-GDC/fp-hcm-01",
    }

    async def policy_and_hash(s: AsyncSession) -> tuple[Policy, str | None]:
        policy = (await snapshot.current(s)).policy(routing)
        version = await s.scalar(
            text("select sha256 from agreement_versions where agreement_id = 'MEKONG-DRAGON'")
        )
        return policy, version

    policy, version = db.call(policy_and_hash)
    assert policy.agreement is not None
    assert policy.agreement["id"] == "MEKONG-DRAGON"
    assert policy.agreement_sha256 == version
    assert policy.operation is not None
    assert policy.operation["id"] == "MEKONG-DRAGON-V"
    assert policy.focal_point_active
    assert [d.valid_from for d in policy.designations] == [date(2023, 1, 1)]
    assert policy.designations[0].covers(datetime.now(UTC).date() + timedelta(days=1))
