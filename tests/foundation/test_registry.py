"""Registry services: the world loads, and bad input is refused with a specific code and changes nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.errors import BrokerError, FieldProblem
from broker.models import Base
from tests.agreements.changes import change_agreement
from tests.conftest import bearer

# Derived from audit_events by the background log sequencer, on its own schedule.
LOG_TABLES = frozenset({"log_leaves", "log_nodes", "checkpoints"})


def _counts() -> dict[str, int]:
    async def counts(s: AsyncSession) -> dict[str, int]:
        return {
            t.name: (await s.scalar(select(func.count()).select_from(t))) or 0
            for t in Base.metadata.sorted_tables
            if t.name not in LOG_TABLES
        }

    return db.call(counts)


class TestWorld:
    def test_loads_the_architecture_world(self, world: dict[str, Any]) -> None:
        counts = _counts()
        assert counts["agencies"] == len(world["agencies"]) == 34
        assert counts["agreements"] == 7
        assert counts["operations"] == 2
        assert counts["designations"] == sum(
            len(fp["designations"]) for fp in world["focal_points"]
        )
        # Every registry change is an audit event in the same transaction.
        assert counts["audit_events"] == sum(
            counts[t]
            for t in ("agencies", "focal_points", "agreements", "designations", "operations")
        )

    def test_loading_twice_creates_nothing(self, world: dict[str, Any]) -> None:
        from broker import world as world_mod

        before = _counts()
        loaded = db.call(world_mod.load_world, world, actor="test")
        assert loaded.created == {}
        assert _counts() == before


def _agreement(world: dict[str, Any], agreement_id: str) -> dict[str, Any]:
    doc = next(a for a in world["agreements"] if a["id"] == agreement_id)
    return copy.deepcopy(doc)


def _jwk(**overrides: Any) -> dict[str, Any]:
    from broker.crypto.keys import SigningKey

    jwk: dict[str, Any] = SigningKey.generate().public.jwk
    jwk.pop("kid")
    jwk.update(overrides)
    return {k: v for k, v in jwk.items() if v is not None}


BAD_INPUTS: list[tuple[str, str, Callable[[dict[str, Any]], tuple[str, str, Any]]]] = [
    (
        "unknown party",
        "registry.unknown_party",
        lambda w: (
            "post",
            "/v1/admin/agreements",
            {**_agreement(w, "VN-HK-CMAA-2013"), "id": "NEW-1", "parties": ["HK-CED", "XX-NOPE"]},
        ),
    ),
    (
        "unknown offence code",
        "registry.unknown_offence",
        lambda w: (
            "post",
            "/v1/admin/agreements",
            {
                **_agreement(w, "VN-HK-CMAA-2013"),
                "id": "NEW-2",
                "offences": ["narcotics", "jaywalking"],
            },
        ),
    ),
    (
        "exclusion naming a non-party",
        "registry.unknown_party",
        lambda w: (
            "post",
            "/v1/admin/agreements",
            {
                **_agreement(w, "VN-NZ-TNC-2019"),
                "id": "NEW-3",
                "exclusions": [
                    {
                        "from": "NZ-POL",
                        "to": "HK-CED",
                        "offences": ["narcotics"],
                        "reason": "x",
                        "unless_assurance": False,
                    }
                ],
            },
        ),
    ),
    (
        "validity ending before it starts",
        "registry.bad_validity",
        lambda w: (
            "post",
            "/v1/admin/agreements",
            {**_agreement(w, "VN-HK-CMAA-2013"), "id": "NEW-4", "valid_until": "2001-01-01"},
        ),
    ),
    (
        "schema violation",
        "registry.invalid_document",
        lambda w: (
            "post",
            "/v1/admin/agreements",
            {**_agreement(w, "VN-HK-CMAA-2013"), "id": "NEW-5", "max_handling": "SECRET"},
        ),
    ),
    (
        "duplicate agreement id",
        "registry.duplicate_id",
        lambda w: ("post", "/v1/admin/agreements", _agreement(w, "VN-HK-CMAA-2013")),
    ),
    (
        "duplicate agency id",
        "registry.duplicate_id",
        lambda w: (
            "post",
            "/v1/admin/agencies",
            {"id": "VN-GDC", "name": "Again", "country": "VN", "kind": "customs"},
        ),
    ),
    (
        "unknown country",
        "registry.unknown_country",
        lambda w: (
            "post",
            "/v1/admin/agencies",
            {"id": "ZZ-NEW", "name": "Nowhere", "country": "ZZ", "kind": "customs"},
        ),
    ),
    (
        "duplicate focal point",
        "registry.duplicate_id",
        lambda w: (
            "post",
            "/v1/admin/agencies/VN-GDC/focal-points",
            {"id": "VN-GDC/fp-hcm-01", "name": "Again", "role": "desk"},
        ),
    ),
    (
        "focal point of an unknown agency",
        "registry.unknown_agency",
        lambda w: (
            "post",
            "/v1/admin/agencies/XX-NOPE/focal-points",
            {"id": "XX-NOPE/fp-01", "name": "Desk", "role": "desk"},
        ),
    ),
    (
        "overlapping designation",
        "registry.validity_overlap",
        lambda w: (
            "post",
            "/v1/admin/focal-points/VN-GDC/fp-hcm-01/designations",
            {"agreement": "VN-HK-CMAA-2013", "valid_from": "2024-01-01"},
        ),
    ),
    (
        "designation of a non-party",
        "registry.not_a_party",
        lambda w: (
            "post",
            "/v1/admin/focal-points/NZ-POL/fp-01/designations",
            {"agreement": "VN-HK-CMAA-2013", "valid_from": "2024-01-01"},
        ),
    ),
    (
        "operation member not a party",
        "registry.not_a_party",
        lambda w: (
            "post",
            "/v1/admin/operations",
            {
                "id": "OP-X",
                "agreement": "VN-KR-CUSTOMS",
                "title": "x",
                "starts_at": "2025-01-01T00:00:00Z",
                "ends_at": "2025-02-01T00:00:00Z",
                "members": ["HK-CED", "VN-GDC"],
                "status": "active",
            },
        ),
    ),
    (
        "operation before its agreement",
        "registry.bad_validity",
        lambda w: (
            "post",
            "/v1/admin/operations",
            {
                "id": "OP-Y",
                "agreement": "VN-KR-CUSTOMS",
                "title": "x",
                "starts_at": "2010-01-01T00:00:00Z",
                "ends_at": "2010-02-01T00:00:00Z",
                "members": ["KR-KCS", "VN-GDC"],
                "status": "active",
            },
        ),
    ),
    (
        "key of the wrong curve",
        "key.wrong_curve",
        lambda w: (
            "post",
            "/v1/admin/keys",
            {
                "agency_id": "VN-GDC",
                "focal_point_id": "VN-GDC/fp-hcm-01",
                "jwk": _jwk(crv="X25519"),
            },
        ),
    ),
    (
        "private key sent as public",
        "key.private_material",
        lambda w: (
            "post",
            "/v1/admin/keys",
            {
                "agency_id": "VN-GDC",
                "focal_point_id": "VN-GDC/fp-hcm-01",
                "jwk": _jwk(d="nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"),
            },
        ),
    ),
    (
        "EC key instead of OKP",
        "key.wrong_curve",
        lambda w: (
            "post",
            "/v1/admin/keys",
            {
                "agency_id": "VN-GDC",
                "focal_point_id": "VN-GDC/fp-hcm-01",
                "jwk": {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                    "use": "sig",
                },
            },
        ),
    ),
    (
        "signing key bound to another agency's focal point",
        "key.bad_binding",
        lambda w: (
            "post",
            "/v1/admin/keys",
            {"agency_id": "HK-CED", "focal_point_id": "VN-GDC/fp-hcm-01", "jwk": _jwk()},
        ),
    ),
]


@pytest.mark.parametrize(("what", "code", "build"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_registry_input_is_refused_and_changes_nothing(
    client: Any,
    world: dict[str, Any],
    admin_headers: dict[str, str],
    what: str,
    code: str,
    build: Callable[[dict[str, Any]], tuple[str, str, Any]],
) -> None:
    method, path, body = build(world)
    before = _counts()
    response = getattr(client, method)(path, json=body, headers=admin_headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code, problem
    assert problem["request_id"] == response.headers["x-request-id"]
    assert _counts() == before


# Each reason a JWK is refused for, and the crypto error whose code and title must report it
# (not merely a generic "invalid key"): routes document these codes, and clients read the title.
JWK_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("X25519 curve on a signing key", {"crv": "X25519"}, "WrongCurve"),
    ("EC key instead of OKP", {"kty": "EC", "crv": "P-256"}, "WrongCurve"),
    (
        "private member d",
        {"d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"},
        "PrivateMaterial",
    ),
    ("symmetric member k", {"k": "c2VjcmV0"}, "PrivateMaterial"),
    ("unknown use", {"use": "sign"}, "WrongUse"),
    ("small-order point", {"x": "A" * 43}, "LowOrderKey"),
    ("kid not the thumbprint", {"kid": "some-name"}, "KeyKidMismatch"),
    ("x of 31 bytes", {"x": "A" * 42}, "InvalidKey"),
]


@pytest.mark.parametrize(("what", "change", "name"), JWK_REFUSALS, ids=[r[0] for r in JWK_REFUSALS])
def test_a_refused_jwk_raises_the_directory_error_of_its_reason(
    world: dict[str, Any], what: str, change: dict[str, Any], name: str
) -> None:
    from broker.crypto import errors as crypto_errors
    from broker.directory import service as directory
    from broker.directory.schemas import KeyIn
    from broker.errors import Refused

    expected = getattr(crypto_errors, name)
    data = KeyIn(agency_id="VN-GDC", focal_point_id="VN-GDC/fp-hcm-01", jwk=_jwk(**change))
    with pytest.raises(Refused) as info:
        db.call(directory.register, data, actor="test")
    assert type(info.value.__cause__) is expected, what
    assert info.value.code == expected.code, what
    assert info.value.errors == [FieldProblem(pointer="/jwk", detail=info.value.detail)]


@pytest.mark.parametrize(("what", "change", "name"), JWK_REFUSALS, ids=[r[0] for r in JWK_REFUSALS])
def test_a_refused_jwk_is_reported_with_its_reason(
    client: Any,
    world: dict[str, Any],
    admin_headers: dict[str, str],
    what: str,
    change: dict[str, Any],
    name: str,
) -> None:
    from broker.crypto import errors as crypto_errors
    from broker.errors import PROBLEMS

    expected = getattr(crypto_errors, name)
    body = {"agency_id": "VN-GDC", "focal_point_id": "VN-GDC/fp-hcm-01", "jwk": _jwk(**change)}
    response = client.post("/v1/admin/keys", json=body, headers=admin_headers)
    problem = response.json()
    assert response.status_code == 422, what
    assert (problem["code"], problem["title"]) == (expected.code, PROBLEMS[expected.code][1]), what
    assert problem["errors"] == [{"pointer": "/jwk", "detail": problem["detail"]}]
    # Every refusal the route can give is in its OpenAPI description.
    documented = client.get("/openapi.json").json()["paths"]["/v1/admin/keys"]["post"]
    assert expected.code in documented["responses"]["422"]["description"], what


def test_invalid_document_reports_every_bad_field(
    client: Any, world: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    doc = {
        **_agreement(world, "VN-HK-CMAA-2013"),
        "id": "NEW-9",
        "max_handling": "SECRET",
        "retention": 5,
    }
    problem = client.post("/v1/admin/agreements", json=doc, headers=admin_headers).json()
    assert problem["code"] == "registry.invalid_document"
    assert {e["pointer"] for e in problem["errors"]} >= {"/max_handling", "/retention"}


class TestKeysLifecycle:
    def test_register_rotate_revoke(
        self, client: Any, world: dict[str, Any], admin_headers: dict[str, str]
    ) -> None:
        created = client.post(
            "/v1/admin/keys",
            headers=admin_headers,
            json={"agency_id": "VN-GDC", "focal_point_id": "VN-GDC/fp-hcm-01", "jwk": _jwk()},
        )
        assert created.status_code == 201, created.text
        kid = created.json()["kid"]
        rotated = client.post(
            f"/v1/admin/keys/{kid}/rotate", headers=admin_headers, json={"jwk": _jwk()}
        )
        assert rotated.status_code == 201, rotated.text
        new_kid = rotated.json()["kid"]
        old = client.get(f"/v1/admin/keys/{kid}", headers=admin_headers).json()
        assert old["status"] == "retired"
        revoked = client.post(
            f"/v1/admin/keys/{new_kid}/revoke",
            headers=admin_headers,
            json={"reason": "key_compromise", "compromised_since": "2026-01-01T00:00:00Z"},
        )
        assert revoked.status_code == 200, revoked.text
        again = client.post(
            f"/v1/admin/keys/{new_kid}/revoke", headers=admin_headers, json={"reason": "superseded"}
        )
        assert again.json()["code"] == "key.not_active"
        jwks = client.get("/v1/directory/jwks?agency=VN-GDC", headers=admin_headers).json()["keys"]
        by_kid = {k["kid"]: k for k in jwks}
        assert by_kid[kid]["status"] == "retired"
        assert by_kid[new_kid]["revocation_reason"] == "key_compromise"
        assert by_kid[new_kid]["compromised_since"] == 1767225600
        assert "d" not in by_kid[kid]
        from broker.audit import repository

        events = db.call(repository.list_events, limit=1000)
        kinds = [e.kind for e in events if e.kind.startswith("key.")]
        assert kinds == ["key.registered", "key.registered", "key.retired", "key.revoked"]

    def test_compromise_needs_a_time(
        self, client: Any, world: dict[str, Any], admin_headers: dict[str, str]
    ) -> None:
        kid = client.post(
            "/v1/admin/keys",
            headers=admin_headers,
            json={"agency_id": "VN-GDC", "focal_point_id": "VN-GDC/fp-hcm-01", "jwk": _jwk()},
        ).json()["kid"]
        response = client.post(
            f"/v1/admin/keys/{kid}/revoke", headers=admin_headers, json={"reason": "key_compromise"}
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"] == "/compromised_since"


def test_agreement_versions_keep_history(
    client: Any, world: dict[str, Any], admin_headers: dict[str, str], token_for: Any
) -> None:
    doc = _agreement(world, "VN-NZ-TNC-2019")
    doc["assurances"] = [
        {
            "from": "NZ-POL",
            "to": "VN-MPS",
            "offence": "narcotics",
            "reference": "Diplomatic note 2026/17",
            "recorded_at": "2026-03-01",
        }
    ]
    adopted = change_agreement(client, token_for, doc)
    assert adopted["version"] == 2
    versions = client.get(
        "/v1/admin/agreements/VN-NZ-TNC-2019/versions", headers=admin_headers
    ).json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["sha256"] != versions[1]["sha256"]
    assert versions[1]["document"]["assurances"][0]["reference"] == "Diplomatic note 2026/17"


def test_party_sees_what_it_may_send_to_whom(
    client: Any, world: dict[str, Any], token_for: Any
) -> None:
    views = client.get(
        "/v1/agreements", headers=bearer(token_for("agency", agency_id="NZ-POL"))
    ).json()
    (view,) = views
    assert view["id"] == "VN-NZ-TNC-2019"
    (direction,) = view["directions"]
    assert direction["to"] == "VN-MPS"
    assert "narcotics" not in direction["offences"]
    assert direction["excluded"][0]["offences"] == ["narcotics"]
    back = client.get(
        "/v1/agreements", headers=bearer(token_for("agency", agency_id="VN-MPS"))
    ).json()
    assert "narcotics" in back[0]["directions"][0]["offences"]


def test_service_errors_are_broker_errors(clean_db: str) -> None:
    from broker.agencies import service

    with pytest.raises(BrokerError) as info:
        db.call(service.get_agency, "XX-NONE")
    assert info.value.code == "request.not_found"
