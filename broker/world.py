"""Load a world (agencies, focal points, agreements, designations, operations) from a file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies import repository as agency_repo
from broker.agencies import service as agencies
from broker.agencies.schemas import AgencyIn, FocalPointIn
from broker.agreements import repository as agreement_repo
from broker.agreements import service as agreements
from broker.agreements.schemas import DesignationIn

DEMO_WORLD = "world.json"


def demo_world() -> dict[str, Any]:
    """The world of ARCHITECTURE.md section 2, shipped with the package."""
    text = resources.files("broker.fixtures").joinpath(DEMO_WORLD).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def read_world(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


@dataclass
class Loaded:
    created: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, *, created: bool) -> None:
        target = self.created if created else self.skipped
        target[kind] = target.get(kind, 0) + 1


async def load_world(
    session: AsyncSession, world: dict[str, Any], *, actor: str, skip_existing: bool = True
) -> Loaded:
    """Create everything in `world`; with `skip_existing`, ids already present are left alone.

    In the caller's transaction (sync callers: `db.call(load_world, doc, actor=...)`).
    """
    agreements._validate("world", world)
    out = Loaded()
    for item in world.get("agencies", []):
        exists = await agency_repo.agency(session, item["id"]) is not None
        if not (exists and skip_existing):
            await agencies.create_agency(session, AgencyIn(**item), actor=actor)
        out.count("agencies", created=not exists)
    for item in world.get("focal_points", []):
        exists = await agency_repo.focal_point(session, item["id"]) is not None
        if not (exists and skip_existing):
            fp = {k: v for k, v in item.items() if k != "designations"}
            await agencies.create_focal_point(
                session, item["id"].split("/")[0], FocalPointIn(**fp), actor=actor
            )
        out.count("focal_points", created=not exists)
    for doc in world.get("agreements", []):
        exists = await agreement_repo.agreement(session, doc["id"]) is not None
        if not (exists and skip_existing):
            await agreements.create_agreement(session, doc, actor=actor)
        out.count("agreements", created=not exists)
    for item in world.get("focal_points", []):
        existing = {
            d.agreement_id
            for d in await agreement_repo.designations(session, focal_point_id=item["id"])
        }
        for des in item.get("designations", []):
            exists = des["agreement"] in existing
            if not (exists and skip_existing):
                await agreements.designate(session, item["id"], DesignationIn(**des), actor=actor)
            out.count("designations", created=not exists)
    for doc in world.get("operations", []):
        exists = await agreement_repo.operation(session, doc["id"]) is not None
        if not (exists and skip_existing):
            await agreements.create_operation(session, doc, actor=actor)
        out.count("operations", created=not exists)
    return out
