"""Shared set-up for the hostile suite: a world with keys, loaded once per module and backend.

The corpus and the fuzzers send many requests against one world, so they share it for a
module (per backend) instead of rebuilding the world, ~90 keys and the tokens for every test;
each check then looks at what its own request changed (deltas), not at absolute counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from tests.conftest import server_lock
from tests.messages.conftest import Exchange, register_world_keys
from tests.messages.conftest import exchange as exchange  # the same fixture, here too

SENDER_FP = "VN-GDC/fp-hcm-01"


def wipe() -> None:
    """Empty every table (the schema stays), as the `clean_db` fixture does after a test."""
    from broker.models import Base

    async def empty(s: AsyncSession) -> None:
        for table in reversed(Base.metadata.sorted_tables):
            await s.execute(delete(table))

    db.call(empty)


def make_token(role: str, **binding: Any) -> str:
    """A bearer token for a new principal of `role` (like the `token_for` fixture)."""
    from broker.auth import service
    from broker.auth.service import Role

    async def issue(s: AsyncSession) -> str:
        principal = await service.create_principal(
            s, name=f"{role}-{uuid.uuid4().hex[:8]}", role=Role(role), actor="test", **binding
        )
        _, secret = await service.issue_token(s, principal, actor="test")
        return secret

    return db.call(issue)


def arm(client: Any) -> Exchange:
    """Load the demo world and register the keys the `exchange` fixture registers."""
    from broker import world as world_mod

    doc = world_mod.demo_world()
    db.call(world_mod.load_world, doc, actor="test")
    return register_world_keys(Exchange(client=client, token_for=make_token), doc)


@pytest.fixture(scope="module")
def armed(app: Any, backend: str) -> Iterator[Exchange]:
    """One world with keys and a client for the whole module (per backend).

    The audit leaf budget is lifted: these tests check one `msg.rejected` leaf per refusal
    (tests/audit/test_budget.py checks the budget).
    """
    from fastapi.testclient import TestClient

    from broker import config

    # Outside its tests' hold on the server lock (a module fixture): a drill elsewhere must not
    # restart PostgreSQL while the world is loaded or wiped.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config.settings(), "audit_budget_per_minute", 1_000_000)
        with TestClient(app, raise_server_exceptions=False) as client:
            with server_lock(exclusive=False):
                wipe()
                armed = arm(client)
            yield armed
    with server_lock(exclusive=False):
        wipe()


def count(sql: str, **params: Any) -> int:
    async def read(s: AsyncSession) -> int:
        return int((await s.execute(text(sql), params)).scalar_one())

    return db.call(read)


def footprint() -> dict[str, int]:
    """What a refused submission must not change, and the one event it must add."""
    return {
        "messages": count("select count(*) from messages"),
        "deliveries": count("select count(*) from deliveries"),
        "rejected": count("select count(*) from audit_events where kind = 'msg.rejected'"),
    }


def last_rejection() -> dict[str, Any]:
    from broker.audit.models import AuditEvent

    async def read(s: AsyncSession) -> AuditEvent:
        found = await s.scalars(
            select(AuditEvent)
            .where(AuditEvent.kind == "msg.rejected")
            .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
            .limit(1)
        )
        return found.one()

    event = db.call(read)
    return {"actor": event.actor, "subject": event.subject, "details": dict(event.details)}


def gated_routes(app: Any) -> list[tuple[str, str, frozenset[Any]]]:
    """(method, path, roles) of every route that declares a RoleGate."""
    from fastapi.routing import APIRoute, _iter_included_route_candidates

    from broker.deps import RoleGate

    out = []
    for route in _iter_included_route_candidates(app.routes):
        if not isinstance(route, APIRoute):
            continue
        gates = [d.call for d in route.dependant.dependencies if isinstance(d.call, RoleGate)]
        if gates:
            out += [(method, route.path, gates[0].roles) for method in sorted(route.methods)]
    return out


# Real object ids for path parameters (anything else gets "x").
PATH_VALUES = {
    "agency_id": "VN-GDC",
    "slug": "fp-hcm-01",
    "agreement_id": "VN-HK-CMAA-2013",
    "operation_id": "TWIN-GUARDIAN-II",
    "name": "nobody",
    "kid": "A" * 43,
    "token_id": "01a209e8-cf03-74d1-ac62-45eda8e12c83",
    "mid": "01a209e8-cf03-74d1-ac62-45eda8e12c84",
}


def url_for(path: str) -> str:
    import re

    return re.sub(r"\{(\w+)(:path)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)


def state_settings(examples: int, steps: int) -> Any:
    """Hypothesis settings for the state machines: a short CI budget, raised by environment.

    STATE_EXAMPLES and STATE_STEPS override the examples (sequences) and the steps per sequence
    (the long form, e.g. `STATE_EXAMPLES=500 STATE_STEPS=40`); HOSTILE_FUZZ_RANDOM=1 explores new
    sequences instead of the derandomized, reproducible CI ones; STATE_SHRINK=1 minimises a
    failing sequence.
    """
    import os

    from hypothesis import HealthCheck, Phase
    from hypothesis import settings as hsettings

    # Shrinking replays HTTP sequences for minutes; the unshrunk sequence (at most STATE_STEPS
    # steps) is printed anyway. STATE_SHRINK=1 turns it on to minimise a failure.
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    if os.environ.get("STATE_SHRINK", "") == "1":
        phases.append(Phase.shrink)
    return hsettings(
        phases=phases,
        max_examples=int(os.environ.get("STATE_EXAMPLES", examples)),
        stateful_step_count=int(os.environ.get("STATE_STEPS", steps)),
        deadline=None,
        database=None,
        derandomize=os.environ.get("HOSTILE_FUZZ_RANDOM", "") != "1",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def audit_events_since(seen: set[Any]) -> list[tuple[str, str | None]]:
    """(kind, subject) of the audit events not in `seen` (ids), which are then added to it."""
    from broker.audit.models import AuditEvent

    async def read(s: AsyncSession) -> list[tuple[Any, str, str | None]]:
        found = await s.execute(select(AuditEvent.id, AuditEvent.kind, AuditEvent.subject))
        return [(id_, kind, subject) for id_, kind, subject in found.all()]

    rows = db.call(read)
    new = [(kind, subject) for id_, kind, subject in rows if id_ not in seen]
    seen.update(id_ for id_, _, _ in rows)
    return new
