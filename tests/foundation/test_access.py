"""Access control, table-driven: every route, every role, and every kind of bad token."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.auth import service
from broker.auth.models import Credential
from broker.auth.service import Role
from broker.deps import RoleGate
from broker.errors import BrokerError
from broker.ids import utcnow
from broker.registry.models import RegistryState
from tests.conftest import bearer

# Real object ids for path parameters, so allowed roles reach the service.
PATH_VALUES = {
    "agency_id": "VN-GDC",
    "slug": "fp-hcm-01",
    "agreement_id": "VN-HK-CMAA-2013",
    "operation_id": "TWIN-GUARDIAN-II",
    "name": "nobody",
    "kid": "A" * 43,
    "token_id": "01a209e8-cf03-74d1-ac62-45eda8e12c83",
    "mid": "01a209e8-cf03-74d1-ac62-45eda8e12c84",
    "hold_id": "01a209e8-cf03-74d1-ac62-45eda8e12c85",
    "proposal_id": "01a209e8-cf03-74d1-ac62-45eda8e12c86",
}
PUBLIC = {"/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"}
# Signed notes and note keys are text by their own standards (C2SP); errors stay problem+json.
TEXT_ROUTES = {
    "/v1/log/checkpoint",
    "/v1/log/key",
    "/v1/operations/{operation_id}/results.csv",
}
# Admitted roles that this test's callers (HK-CED's agency, VN-GDC's focal point) still fail
# on the resource: TWIN-GUARDIAN-II is coordinated by KR-KCS (tests/results/test_access.py).
NOT_COORDINATOR = {
    (path, role): "auth.forbidden"
    for path in (
        "/v1/operations/{operation_id}/results",
        "/v1/operations/{operation_id}/results.csv",
        "/v1/operations/{operation_id}/results/feedback",
    )
    for role in ("agency", "focal_point")
}


def _flat(dependant: Any) -> list[Any]:
    """A route's dependencies, nested ones included (a gate inside `AgencyRegistryCaller`)."""
    found = []
    for dep in dependant.dependencies:
        found += [dep, *_flat(dep)]
    return found


def gated_routes(app: Any) -> list[tuple[str, str, frozenset[Role]]]:
    """(method, path, allowed roles) for every API route, read from its RoleGate."""
    out = []
    # FastAPI 0.16x keeps included routers nested; this yields their effective routes.
    from fastapi.routing import _iter_included_route_candidates

    for route in _iter_included_route_candidates(app.routes):
        if not isinstance(route, APIRoute) or route.path in PUBLIC:
            continue
        gates = [d.call for d in _flat(route.dependant) if isinstance(d.call, RoleGate)]
        assert len(gates) == 1, f"{route.path} must declare exactly one RoleGate"
        for method in sorted(route.methods):
            out.append((method, route.path, gates[0].roles))
    return out


def test_every_api_route_declares_its_roles(app: Any) -> None:
    routes = gated_routes(app)
    assert len(routes) >= 20
    assert all(path.startswith("/v1/") for _, path, _ in routes)
    # Administration is for administrators, and an agency's registrar where it shares the
    # route (tests/hostile/test_registrar_bola.py: its own agency's objects only).
    admin = [roles for _, path, roles in routes if path.startswith("/v1/admin")]
    assert all(roles in ({Role.admin}, {Role.admin, Role.registrar}) for roles in admin)


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)(:path)?\}", lambda m: PATH_VALUES[m.group(1)], path)


async def _revoke(s: AsyncSession, token: str) -> None:
    found = await service.repository.credential_by_hash(s, service.hash_token(token))
    assert found is not None
    await service.revoke_token(s, found[0].id, actor="test")


@pytest.fixture
def callers(world: dict[str, Any], token_for: Any) -> dict[str, str | None]:
    """One token per role, plus no token, garbage, expired and revoked tokens."""
    expired = token_for("agency", agency_id="HK-CED")
    revoked = token_for("agency", agency_id="HK-CED")

    async def expire_and_revoke(s: AsyncSession) -> None:
        await s.execute(
            update(Credential)
            .where(Credential.token_hash == service.hash_token(expired))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await _revoke(s, revoked)

    db.call(expire_and_revoke)
    return {
        "none": None,
        "garbage": "brk_" + "x" * 43,
        "expired": expired,
        "revoked": revoked,
        "admin": token_for("admin"),
        "registrar": token_for("registrar", agency_id="VN-GDC"),
        "auditor": token_for("auditor", audit_agencies=["VN-GDC", "HK-CED"]),
        "agency": token_for("agency", agency_id="HK-CED"),
        "focal_point": token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01"),
    }


EXPECTED_401 = {
    "none": "auth.unauthenticated",
    "garbage": "auth.unauthenticated",
    "expired": "auth.token_expired",
    "revoked": "auth.token_revoked",
}


def test_every_route_with_every_caller(
    app: Any, client: Any, callers: dict[str, str | None]
) -> None:
    checked = 0
    for method, path, roles in gated_routes(app):
        for who, token in callers.items():
            headers = bearer(token) if token else {}
            response = client.request(method, _url(path), headers=headers, json={})
            where = f"{who} {method} {path}: {response.status_code} {response.text[:200]}"
            assert response.status_code < 500, where
            text_ok = path in TEXT_ROUTES and response.status_code == 200
            assert text_ok or response.headers["content-type"].startswith("application/"), where
            if who in EXPECTED_401:
                assert response.status_code == 401, where
                assert response.json()["code"] == EXPECTED_401[who], where
            elif Role(who) not in roles:
                assert response.status_code == 403, where
                assert response.json()["code"] == "auth.forbidden", where
            elif (path, who) in NOT_COORDINATOR:
                assert response.status_code == 403, where
                assert response.json()["code"] == NOT_COORDINATOR[path, who], where
            else:
                assert response.status_code not in (401, 403), where
            checked += 1
    assert checked == len(gated_routes(app)) * len(callers)


def test_auditor_and_agency_cannot_administer(client: Any, callers: dict[str, str | None]) -> None:
    for who in ("auditor", "agency", "focal_point", "registrar"):
        token = callers[who]
        assert token is not None
        response = client.post(
            "/v1/admin/principals", headers=bearer(token), json={"name": "sneaky", "role": "admin"}
        )
        assert response.status_code == 403


def test_revocation_takes_effect_immediately(
    client: Any, world: dict[str, Any], token_for: Any
) -> None:
    token = token_for("agency", agency_id="HK-CED")
    assert client.get("/v1/me", headers=bearer(token)).status_code == 200
    db.call(_revoke, token)
    assert client.get("/v1/me", headers=bearer(token)).json()["code"] == "auth.token_revoked"


def test_tokens_are_stored_only_as_hashes(
    client: Any, world: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    issued = client.post(
        "/v1/admin/principals",
        headers=admin_headers,
        json={"name": "hk-inbox", "role": "agency", "agency_id": "HK-CED"},
    ).json()
    token = issued["token"]
    assert token.startswith("brk_")
    assert len(token) >= 4 + 43

    async def stored_hashes(s: AsyncSession) -> list[str]:
        return list((await s.scalars(select(Credential.token_hash))).all())

    assert token not in db.call(stored_hashes)
    me = client.get("/v1/me", headers=bearer(token)).json()
    assert me == {
        "name": "hk-inbox",
        "role": "agency",
        "agency_id": "HK-CED",
        "focal_point_id": None,
        "audit_agencies": None,
    }


def test_principal_binding_must_fit_role(
    client: Any, world: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    bad = client.post(
        "/v1/admin/principals",
        headers=admin_headers,
        json={"name": "fp-nowhere", "role": "focal_point", "focal_point_id": "XX-NO/fp-01"},
    )
    assert bad.status_code == 422
    assert bad.json()["code"] == "request.invalid"


@pytest.mark.parametrize("who", ["agency", "unknown", "revoked"])
def test_authentication_reads_the_registry_stamp_in_the_same_statement(
    world: dict[str, Any], token_for: Any, who: str
) -> None:
    """One SELECT answers both; the stamp comes back even when the token is refused."""
    token = "brk_" + "x" * 43 if who == "unknown" else token_for("agency", agency_id="HK-CED")
    if who == "revoked":
        db.call(_revoke, token)

    async def authenticate(s: AsyncSession) -> tuple[str | None, list[str], str | None]:
        statements: list[str] = []

        def seen(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        assert s.bind is not None
        engine = s.bind.sync_engine
        event.listen(engine, "before_cursor_execute", seen)
        try:
            await service.authenticate(s, token)
            refused = None
        except BrokerError as exc:
            refused = exc.code
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        selects = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
        return refused, selects, s.info["registry_stamp"]

    refused, selects, stamp = db.call(authenticate)
    expected = {"agency": None, "unknown": "auth.unauthenticated", "revoked": "auth.token_revoked"}
    assert refused == expected[who]
    assert len(selects) == 1, selects
    stored = db.call(lambda s: s.scalar(select(RegistryState.stamp)))
    assert stamp is not None
    assert stamp == stored


def test_metrics_need_the_scraper_token(client: Any) -> None:
    """Issue 15.7: /metrics (per-recipient gauges, per-route traffic) needed no credential."""
    from broker.config import settings
    from tests.conftest import SCRAPER

    for headers in ({}, {"Authorization": "Bearer brk_not-the-scraper"}, {"Authorization": ""}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["code"] == "auth.unauthenticated"
        assert "broker_" not in refused.text
    assert client.get("/metrics", headers=SCRAPER).status_code == 200
    cfg = settings()
    saved = cfg.metrics_token, cfg.metrics_public
    try:
        cfg.metrics_token = None  # no scraper configured: nobody
        assert client.get("/metrics", headers=SCRAPER).status_code == 401
        cfg.metrics_public = True  # the operator's choice, for an internal listener
        assert client.get("/metrics").status_code == 200
    finally:
        cfg.metrics_token, cfg.metrics_public = saved


def test_the_api_description_can_be_withheld(backend: str) -> None:
    from fastapi.testclient import TestClient

    from broker import config
    from broker.main import create_app

    saved = config.settings()
    config.configure(**{**saved.model_dump(), "api_docs": False})
    try:
        with TestClient(create_app()) as client:
            assert client.get("/openapi.json").status_code == 404
            assert client.get("/docs").status_code == 404
    finally:
        config.configure(**saved.model_dump())
