"""Broken object-level authorisation, registrar by registrar: every route a registrar may call,
on real objects of VN-GDC, called by HK-CED's registrar, is refused 403 `auth.foreign_agency`
(an agreement HK-CED is no party to, VN-KR-CUSTOMS: `agreement.not_party`) and changes nothing;
VN-GDC's own registrar gets through on the same objects.

The routes come from the application (every route whose role gate admits `registrar`): a new
one without a row here fails, so a registry route cannot be added without saying which of its
objects carries the agency. Each row's request is a valid one, made on a live object (VN-GDC's
principal, its token, its focal point's signing key, its designation): were the check missing,
the foreign registrar's request would succeed, and the test would see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.crypto.keys import EncryptionKey, SigningKey
from tests.conftest import bearer, server_lock
from tests.hostile.conftest import SENDER_FP, count, make_token
from tests.hostile.test_route_inputs import endpoints, url_for
from tests.messages.conftest import Exchange

pytestmark = pytest.mark.hostile

OWN, FOREIGN = "VN-GDC", "HK-CED"
REASON = {"reason": "registrar test"}


@dataclass(frozen=True)
class Objects:
    """Live VN-GDC objects the rows name."""

    principal: str
    token_id: str
    kid: str
    proposal: dict[str, Any]  # an open proposal to change VN-KR-CUSTOMS (VN-GDC and KR-KCS)
    approval: str  # VN-GDC's signed approval of it


def _today() -> date:
    return datetime.now(UTC).date()


def _new_sig_jwk() -> dict[str, Any]:
    return dict(SigningKey.generate().public.jwk)


# For each route a registrar may call: its query and a valid body (a function of the objects).
Body = Callable[[Objects], Any]
ROWS: dict[tuple[str, str], tuple[dict[str, str], Body | None]] = {
    ("GET", "/v1/admin/agencies/{agency_id}"): ({}, None),
    ("POST", "/v1/admin/agencies/{agency_id}/focal-points"): (
        {},
        lambda o: {"id": "VN-GDC/fp-bola-01", "name": "BOLA desk", "role": "liaison officer"},
    ),
    ("GET", "/v1/admin/focal-points"): ({"agency": OWN}, None),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/suspend"): ({}, lambda o: REASON),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/reactivate"): ({}, lambda o: REASON),
    ("PUT", "/v1/admin/agencies/{agency_id}/push"): (
        {},
        lambda o: {"url": "https://alerts.customs.gov.vn/broker/push", "enabled": False},
    ),
    ("GET", "/v1/admin/agencies/{agency_id}/push"): ({}, None),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/designations"): (
        {},
        lambda o: {"agreement": "VN-KR-CUSTOMS", "valid_from": str(_today())},
    ),
    ("GET", "/v1/admin/focal-points/{agency_id}/{slug}/designations"): ({}, None),
    ("POST", "/v1/admin/focal-points/{agency_id}/{slug}/designations/{agreement_id}/end"): (
        {},
        lambda o: {"valid_until": str(_today()), "reason": "registrar test"},
    ),
    ("POST", "/v1/admin/principals"): (
        {},
        lambda o: {"name": "vn-gdc-bola-inbox", "role": "agency", "agency_id": OWN},
    ),
    ("GET", "/v1/admin/principals"): ({"agency": OWN}, None),
    ("POST", "/v1/admin/principals/{name}/tokens"): ({}, lambda o: {}),
    ("POST", "/v1/admin/principals/{name}/disable"): ({}, lambda o: REASON),
    ("POST", "/v1/admin/principals/{name}/enable"): ({}, lambda o: REASON),
    ("POST", "/v1/admin/tokens/{token_id}/revoke"): ({}, None),
    ("POST", "/v1/admin/keys"): (
        {},
        lambda o: {"agency_id": OWN, "focal_point_id": SENDER_FP, "jwk": _new_sig_jwk()},
    ),
    ("GET", "/v1/admin/keys"): ({"agency": OWN}, None),
    ("GET", "/v1/admin/keys/{kid}"): ({}, None),
    ("POST", "/v1/admin/keys/{kid}/rotate"): ({}, lambda o: {"jwk": _new_sig_jwk()}),
    ("POST", "/v1/admin/keys/{kid}/retire"): ({}, None),
    ("POST", "/v1/admin/keys/{kid}/revoke"): ({}, lambda o: {"reason": "superseded"}),
    # VN-KR-CUSTOMS binds VN-GDC and KR-KCS: HK-CED's registrar is no party to it
    ("GET", "/v1/admin/agreements/{agreement_id}/versions"): ({}, None),
    ("POST", "/v1/agreements/{agreement_id}/proposals"): ({}, lambda o: o.proposal["document"]),
    ("GET", "/v1/agreements/{agreement_id}/proposals"): ({}, None),
    ("POST", "/v1/agreements/{agreement_id}/proposals/{proposal_id}/approvals"): (
        {},
        lambda o: {"approval": o.approval},
    ),
    ("POST", "/v1/agreements/{agreement_id}/restrictions"): (
        {},
        lambda o: {"action": "exclude", "to": "KR-KCS", "offences": ["nps"], "reason": "test"},
    ),
}
# An agreement is no agency's object: a registrar of no party is refused by the agreement.
NOT_PARTY = {path for path in ROWS if "agreements/{agreement_id}" in path[1]}
# Routes every authenticated caller may read (the directory, the log): nothing of an agency's
# to change, so no object-level check to make here.
EVERYONE = frozenset({"focal_point", "agency", "auditor", "admin", "registrar"})


def _registrar_routes(app: Any) -> set[tuple[str, str]]:
    return {
        e.key
        for e in endpoints(app)
        if e.roles is not None
        and "registrar" in {r.value for r in e.roles}
        and {r.value for r in e.roles} != EVERYONE
    }


def test_every_registrar_route_has_a_row(app: Any) -> None:
    routes = _registrar_routes(app)
    missing = sorted(routes - set(ROWS))
    assert not missing, f"registrar route without a BOLA row: {missing}"
    stale = sorted(set(ROWS) - routes)
    assert not stale, f"BOLA rows for routes registrars may not call: {stale}"


@pytest.fixture(scope="module")
def objects(armed: Exchange) -> Objects:
    from broker.auth import service
    from broker.sdk import agreements

    async def make(s: AsyncSession) -> tuple[str, str]:
        principal = await service.create_principal(
            s, name="vn-gdc-bola-fp", role=service.Role.agency, agency_id=OWN, actor="test"
        )
        credential, _ = await service.issue_token(s, principal, actor="test")
        return principal.name, str(credential.id)

    with server_lock(exclusive=False):
        name, token_id = db.call(make)
        admin = bearer(make_token("admin"))
        versions = armed.client.get(
            "/v1/admin/agreements/VN-KR-CUSTOMS/versions", headers=admin
        ).json()
        document = versions[-1]["document"]
        widened = dict(document, offences=sorted({*document["offences"], "cites_wildlife"}))
        proposal = armed.client.post(
            "/v1/agreements/VN-KR-CUSTOMS/proposals", json=widened, headers=admin
        ).json()
    approval = agreements.sign_approval(proposal, OWN, armed.agency_signing[OWN])
    return Objects(name, token_id, armed.signing[SENDER_FP].kid, proposal, approval)


def _values(objects: Objects) -> dict[str, str]:
    return {
        "agency_id": OWN,
        "slug": SENDER_FP.split("/")[1],
        "agreement_id": "VN-KR-CUSTOMS",
        "proposal_id": str(objects.proposal["id"]),
        "name": objects.principal,
        "token_id": objects.token_id,
        "kid": objects.kid,
    }


def _changes_by(actor_prefix: str) -> int:
    return count(
        "select count(*) from audit_events where actor like :actor", actor=actor_prefix + "%"
    )


def test_a_foreign_registrar_is_refused_every_object_and_changes_nothing(
    armed: Exchange, objects: Objects, backend: str
) -> None:
    foreign = make_token("registrar", agency_id=FOREIGN)
    before = _registry_rows()
    wrong = []
    for (method, path), (query, body) in ROWS.items():
        response = armed.client.request(
            method,
            url_for(path, _values(objects)),
            params=query,
            headers=bearer(foreign),
            json=body(objects) if body is not None else None,
        )
        answer = response.json() if response.content else None
        code = answer.get("code") if isinstance(answer, dict) else None
        wanted = "agreement.not_party" if (method, path) in NOT_PARTY else "auth.foreign_agency"
        if response.status_code != 403 or code != wanted:
            wrong.append(f"{method} {path}: {response.status_code} {response.text[:160]}")
    assert not wrong, "a foreign registrar got through:\n" + "\n".join(wrong)
    assert _registry_rows() == before
    assert _changes_by("registrar:") == 0


def test_the_agencys_own_registrar_gets_through_on_the_same_objects(
    armed: Exchange, objects: Objects, backend: str
) -> None:
    """The same requests, in the same order, by VN-GDC's registrar: each admitted (no 401 or
    403) and each change on the log under the registrar's name."""
    own = make_token("registrar", agency_id=OWN)
    refused = []
    for (method, path), (query, body) in ROWS.items():
        response = armed.client.request(
            method,
            url_for(path, _values(objects)),
            params=query,
            headers=bearer(own),
            json=body(objects) if body is not None else None,
        )
        if response.status_code in (401, 403) or response.status_code >= 500:
            refused.append(f"{method} {path}: {response.status_code} {response.text[:160]}")
    assert not refused, "VN-GDC's registrar was refused its own objects:\n" + "\n".join(refused)
    assert _changes_by("registrar:") > 0


def test_a_registrar_may_not_mint_roles_beyond_its_agency(armed: Exchange, backend: str) -> None:
    own = bearer(make_token("registrar", agency_id=OWN))
    for role, binding in (
        ("admin", {}),
        ("auditor", {"audit_agencies": [OWN]}),
        ("registrar", {"agency_id": OWN}),
        ("focal_point", {"focal_point_id": "HK-CED/fp-01"}),
        ("agency", {"agency_id": FOREIGN}),
    ):
        name = f"minted-{role}-{len(binding)}"
        response = armed.client.post(
            "/v1/admin/principals", json={"name": name, "role": role, **binding}, headers=own
        )
        assert response.status_code == 403, (role, binding, response.text)
        assert count("select count(*) from principals where name = :n", n=name) == 0


def _registry_rows() -> dict[str, Any]:
    """What a refused registrar request could have changed."""

    async def read(s: AsyncSession) -> dict[str, Any]:
        queries = {
            "focal_points": "select id, status from focal_points order by id",
            "designations": "select focal_point_id, agreement_id, valid_until from designations"
            " order by focal_point_id, agreement_id",
            "principals": "select name, status from principals order by name",
            "credentials": "select id, revoked_at from credentials order by id",
            "keys": "select kid, status from keys order by kid",
            "agreements": "select id, current_version, status from agreements order by id",
            "proposals": "select id, status from agreement_proposals order by id",
            "approvals": "select proposal_id, agency_id from agreement_approvals order by 1, 2",
            "push": "select agency_id, url from push_endpoints order by agency_id",
        }
        return {
            name: [tuple(map(str, row)) for row in (await s.execute(text(q))).all()]
            for name, q in queries.items()
        }

    return db.call(read)


def test_encryption_keys_are_the_agencys_own_too(armed: Exchange, backend: str) -> None:
    """An encryption key registered for another agency is refused like any other object."""
    foreign = bearer(make_token("registrar", agency_id=FOREIGN))
    jwk = dict(EncryptionKey.generate().public.jwk)
    response = armed.client.post(
        "/v1/admin/keys", json={"agency_id": OWN, "jwk": jwk}, headers=foreign
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "auth.foreign_agency"
    own = bearer(make_token("registrar", agency_id=FOREIGN))
    mine = armed.client.post("/v1/admin/keys", json={"agency_id": FOREIGN, "jwk": jwk}, headers=own)
    assert mine.status_code == 201, mine.text
