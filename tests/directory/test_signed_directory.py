"""The broker-signed key directory (`GET /v1/directory`, PROTOCOL.md 6.2): published once per
key set, served byte for byte, logged, verifiable with joserfc, and refused by the SDK when it
is tampered with, unsigned, signed by another key, expired or older than one already seen."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws as joserfc_jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, keyring, schemas
from broker.audit.models import AuditEvent, LogLeaf
from broker.crypto import envelope as env
from broker.crypto.keys import EncryptionKey, SigningKey, b64u_decode, b64u_encode, sha256_b64u
from broker.directory import service
from broker.directory.models import DirectoryVersion
from broker.directory.schemas import KeyIn
from broker.sdk import directory as sdk
from broker.sdk.client import BrokerClient
from tests.audit.conftest import scalars, sequence_all
from tests.conftest import bearer

FP, HK, VN = "VN-GDC/fp-hcm-01", "HK-CED", "VN-GDC"
DAY = 24 * 3600


@pytest.fixture
def registry(clean_db: str) -> None:
    """Two agencies and a focal point: all the registry a key directory needs (the full demo
    world would only slow these tests down)."""
    from broker.agencies import service as agencies
    from broker.agencies.schemas import AgencyIn, FocalPointIn

    async def load(session: AsyncSession) -> None:
        for agency_id, name in ((HK, "Hong Kong Customs"), (VN, "Vietnam Customs")):
            data = AgencyIn(id=agency_id, name=name, country=agency_id[:2], kind="customs")
            await agencies.create_agency(session, data, actor="test")
        fp = FocalPointIn(id=FP, name="Duty desk", role="customs liaison officer")
        await agencies.create_focal_point(session, VN, fp, actor="test")

    db.call(load)


def receipt_jwk() -> dict[str, Any]:
    """The broker's receipt key as a partner pins it (public JWK)."""
    return dict(keyring.load_or_create().receipt.public.jwk)


def payload_of(token: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(b64u_decode(token.split(".")[1]))
    return doc


def register(client: Any, admin: dict[str, str], body: dict[str, Any]) -> str:
    response = client.post("/v1/admin/keys", json=body, headers=admin)
    assert response.status_code == 201, response.text
    kid: str = response.json()["kid"]
    return kid


def signing_key_of(client: Any, admin: dict[str, str]) -> str:
    return register(
        client,
        admin,
        {"agency_id": VN, "focal_point_id": FP, "jwk": SigningKey.generate().public.jwk},
    )


def encryption_key_of(client: Any, admin: dict[str, str], agency: str = HK) -> str:
    return register(
        client, admin, {"agency_id": agency, "jwk": EncryptionKey.generate().public.jwk}
    )


def served(client: Any, headers: dict[str, str]) -> str:
    response = client.get("/v1/directory", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["directory"]
    token: str = body["directory"]
    return token


def versions() -> list[DirectoryVersion]:
    return scalars(select(DirectoryVersion).order_by(DirectoryVersion.version))


@pytest.fixture
def parties(client: Any, registry: None, token_for: Any) -> dict[str, dict[str, str]]:
    return {
        "admin": bearer(token_for("admin")),
        "agency": bearer(token_for("agency", agency_id=HK)),
        "focal_point": bearer(token_for("focal_point", focal_point_id=FP)),
        "auditor": bearer(token_for("auditor")),
    }


class TestRoute:
    def test_signed_jwks_for_every_role(
        self, client: Any, parties: dict[str, dict[str, str]]
    ) -> None:
        kids = {
            signing_key_of(client, parties["admin"]),
            encryption_key_of(client, parties["admin"]),
        }
        tokens = {role: served(client, headers) for role, headers in parties.items()}
        token = tokens["agency"]
        assert set(tokens.values()) == {token}  # the same bytes for everyone
        payload = env.verify_compact(token, receipt_jwk(), env.TYP_DIRECTORY)
        jwks = client.get("/v1/directory/jwks", headers=parties["agency"]).json()["keys"]
        assert payload == {
            "v": 1,
            "version": 1,
            "issued_at": payload["issued_at"],
            "expires_at": payload["issued_at"] + DAY,
            "keys": jwks,
            "previous_sha256": None,
        }
        assert {k["kid"] for k in payload["keys"]} == kids
        header = json.loads(b64u_decode(token.split(".")[0]))
        assert header == {"alg": "Ed25519", "kid": receipt_jwk()["kid"], "typ": "key-directory+jws"}

    def test_no_token_no_directory(self, client: Any, parties: dict[str, dict[str, str]]) -> None:
        response = client.get("/v1/directory")
        assert (response.status_code, response.json()["code"]) == (401, "auth.unauthenticated")
        assert versions() == []

    def test_documented_with_an_example(self, client: Any) -> None:
        op = client.get("/openapi.json").json()["paths"]["/v1/directory"]["get"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/SignedDirectory"}
        assert "403" in op["responses"]


class TestPublication:
    def test_a_new_version_only_when_the_keys_change(
        self, client: Any, parties: dict[str, dict[str, str]]
    ) -> None:
        admin, reader = parties["admin"], parties["agency"]
        kid = signing_key_of(client, admin)
        first = served(client, reader)
        assert served(client, reader) == first
        encryption_key_of(client, admin)
        second = served(client, reader)
        assert payload_of(second)["version"] == 2
        assert payload_of(second)["previous_sha256"] == sha256_b64u(first.encode("ascii"))
        assert served(client, reader) == second
        assert client.post(f"/v1/admin/keys/{kid}/retire", headers=admin).status_code == 200
        third = served(client, reader)
        assert payload_of(third)["version"] == 3
        assert {k["kid"]: k["status"] for k in payload_of(third)["keys"]}[kid] == "retired"
        rows = versions()
        assert [(r.version, r.jws) for r in rows] == [(1, first), (2, second), (3, third)]
        assert [r.sha256 for r in rows] == [
            sha256_b64u(t.encode("ascii")) for t in (first, second, third)
        ]

    def test_reissued_after_half_its_lifetime(
        self, client: Any, parties: dict[str, dict[str, str]]
    ) -> None:
        signing_key_of(client, parties["admin"])
        first = db.call(service.signed_directory)
        half = first.issued_at + (first.expires_at - first.issued_at) / 2
        just_before = db.call(
            service.signed_directory, now=first.issued_at + (first.expires_at - first.issued_at) / 3
        )
        assert just_before.jws == first.jws
        later = db.call(service.signed_directory, now=half)
        assert later.version == 2
        assert payload_of(later.jws)["keys"] == payload_of(first.jws)["keys"]
        assert payload_of(later.jws)["issued_at"] == int(half.timestamp())

    def test_each_version_is_a_log_leaf(
        self, client: Any, parties: dict[str, dict[str, str]]
    ) -> None:
        signing_key_of(client, parties["admin"])
        encryption_key_of(client, parties["admin"])
        token = served(client, parties["agency"])
        served(client, parties["agency"])  # unchanged: not published again
        sequence_all()
        events = scalars(select(AuditEvent).where(AuditEvent.kind == "directory.published"))
        assert len(events) == 1
        leaves = [json.loads(r.leaf_bytes) for r in scalars(select(LogLeaf))]
        (leaf,) = [doc for doc in leaves if doc["kind"] == "directory.published"]
        payload = payload_of(token)
        assert {k: leaf[k] for k in ("version", "sha256", "issued_at", "expires_at", "keys")} == {
            "version": 1,
            "sha256": sha256_b64u(token.encode("ascii")),
            "issued_at": payload["issued_at"],
            "expires_at": payload["expires_at"],
            "keys": 2,
        }
        assert (leaf["actor"], leaf["subject"]) == ("broker:directory", "directory:1")
        schemas.validate("log-leaf", leaf)

    def test_a_new_broker_key_republishes(
        self, client: Any, parties: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        signing_key_of(client, parties["admin"])
        first = served(client, parties["agency"])
        keys = keyring.load_or_create()
        other = keyring.BrokerKeys(SigningKey.generate(), keys.log, keys.log_origin)
        monkeypatch.setattr(keyring, "load_or_create", lambda: other)
        second = served(client, parties["agency"])
        assert payload_of(second)["version"] == 2
        env.verify_compact(second, other.receipt.public.jwk, env.TYP_DIRECTORY)
        assert payload_of(second)["keys"] == payload_of(first)["keys"]


class TestConcurrency:
    def test_two_workers_publish_one_version(self, registry: None, backend: str) -> None:
        """A publishes and holds its transaction open; B, racing, must wait and read A's back."""

        async def waiting_on_a_lock(probe: AsyncSession) -> bool:
            found = await probe.scalar(
                text(
                    "select count(*) from pg_stat_activity "
                    "where datname = current_database() and wait_event_type = 'Lock'"
                )
            )
            return bool(found)

        async def race() -> tuple[DirectoryVersion, DirectoryVersion]:
            engine = db.engine()
            async with (
                AsyncSession(engine, expire_on_commit=False) as a,
                AsyncSession(engine, expire_on_commit=False) as b,
            ):
                won = await service.signed_directory(a)
                other = asyncio.create_task(service.signed_directory(b))
                if backend == "postgresql":
                    # B read the last version before A's commit, so its insert of the same
                    # number must block on A's row: wait until it does.
                    async with AsyncSession(engine) as probe:
                        for _ in range(1000):
                            if other.done() or await waiting_on_a_lock(probe):
                                break
                            await probe.rollback()  # a fresh view of the activity each time
                            await asyncio.sleep(0.01)
                        else:
                            pytest.fail("B neither waited for A nor finished")
                    assert not other.done(), "B must wait for A, not publish beside it"
                await a.commit()
                lost = await other
                await b.commit()
                return won, lost

        won, lost = db.run(race)
        assert (won.version, won.jws) == (lost.version, lost.jws) == (1, won.jws)
        assert [r.version for r in versions()] == [1]
        published = scalars(select(AuditEvent).where(AuditEvent.kind == "directory.published"))
        assert len(published) == 1

    def test_a_stale_read_loses_to_the_database(
        self, registry: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker that believes no directory exists still cannot publish a second version 1."""
        first = db.call(service.signed_directory)
        real = service.repository.latest_version
        calls: list[int] = []

        async def stale_once(session: AsyncSession) -> DirectoryVersion | None:
            calls.append(1)
            return None if len(calls) == 1 else await real(session)

        monkeypatch.setattr(service.repository, "latest_version", stale_once)
        again = db.call(service.signed_directory)
        assert len(calls) >= 2  # the insert found version 1 taken and read it back
        assert (again.version, again.jws) == (1, first.jws)
        assert [r.version for r in versions()] == [1]


class TestIndependentVerifier:
    def test_joserfc_verifies_it(self, client: Any, parties: dict[str, dict[str, str]]) -> None:
        signing_key_of(client, parties["admin"])
        token = served(client, parties["auditor"])
        key = OKPKey.import_key(receipt_jwk())
        registry = JWSRegistry(algorithms=["Ed25519"])
        verified = joserfc_jws.deserialize_compact(token, key, registry=registry)
        assert verified.protected["typ"] == "key-directory+jws"
        assert json.loads(verified.payload) == payload_of(token)
        with pytest.raises(BadSignatureError):
            joserfc_jws.deserialize_compact(
                token, OKPKey.import_key(SigningKey.generate().public.jwk), registry=registry
            )


# --- the SDK's checks, on tokens made here ------------------------------------------------------

BROKER = SigningKey.from_seed(bytes(range(32)))
NOW = 1_765_137_600


def directory(version: int = 1, *, previous: str | None = None, signer: SigningKey = BROKER,
              typ: str = env.TYP_DIRECTORY, **members: Any) -> str:  # fmt: skip
    payload = {
        "v": 1,
        "version": version,
        "issued_at": NOW,
        "expires_at": NOW + DAY,
        "keys": [{**SigningKey.from_seed(b"\x07" * 32).public.jwk, "agency": VN}],
        "previous_sha256": previous,
        **members,
    }
    return env.sign_compact(payload, signer, typ)


def refused(token: str, code: str, **kwargs: Any) -> None:
    with pytest.raises(sdk.DirectoryRefused) as caught:
        sdk.verify_directory(token, BROKER.public.jwk, now=kwargs.pop("now", NOW + 60), **kwargs)
    assert caught.value.code == code, caught.value


class TestSDKChecks:
    def test_accepts_a_good_directory(self) -> None:
        token = directory(3)
        found = sdk.verify_directory(token, BROKER.public.jwk, now=NOW + 60)
        assert (found.version, found.sha256, found.jws) == (3, sha256_b64u(token.encode()), token)
        assert [k["agency"] for k in found.of(VN)] == [VN]
        assert found.of(HK) == []

    def test_refuses_a_tampered_payload(self) -> None:
        header, payload, signature = directory().split(".")
        doc = json.loads(b64u_decode(payload))
        doc["keys"][0]["x"] = EncryptionKey.generate().public.jwk["x"]
        forged = b64u_encode(json.dumps(doc, separators=(",", ":")).encode())
        refused(f"{header}.{forged}.{signature}", "directory.bad_signature")

    def test_refuses_another_key(self) -> None:
        refused(directory(signer=SigningKey.generate()), "directory.bad_signature")

    def test_refuses_an_unsigned_directory(self) -> None:
        header = b64u_encode(json.dumps({"alg": "none", "typ": env.TYP_DIRECTORY}).encode())
        payload = directory().split(".")[1]
        refused(f"{header}.{payload}.", "directory.unsigned")
        refused(f"{header}.{payload}.{directory().split('.')[2]}", "directory.unsigned")

    def test_refuses_a_signature_stripped_off(self) -> None:
        header, payload, _ = directory().split(".")
        refused(f"{header}.{payload}.", "directory.unsigned")

    def test_refuses_another_kind_of_token(self) -> None:
        refused(directory(typ=env.TYP_RECEIPT), "directory.wrong_type")

    def test_refuses_an_expired_directory(self) -> None:
        token = directory()
        sdk.verify_directory(token, BROKER.public.jwk, now=NOW + DAY - 1)
        refused(token, "directory.stale", now=NOW + DAY)

    def test_refuses_malformed_payloads(self) -> None:
        refused(directory(v=2), "directory.malformed")
        refused(directory(version="7"), "directory.malformed")
        refused(directory(keys={"kid": "x"}), "directory.malformed")
        refused("not.a-jws", "directory.malformed")

    def test_refuses_a_rollback_and_a_fork(self) -> None:
        two = directory(2)
        seen = sdk.Seen(2, sha256_b64u(two.encode()))
        sdk.verify_directory(two, BROKER.public.jwk, now=NOW, seen=seen)  # the same one again
        refused(directory(1), "directory.rollback", seen=seen)
        refused(directory(2, previous="x" * 43), "directory.fork", seen=seen)
        refused(directory(3, previous="y" * 43), "directory.fork", seen=seen)
        sdk.verify_directory(
            directory(3, previous=seen.sha256), BROKER.public.jwk, now=NOW, seen=seen
        )
        sdk.verify_directory(directory(9), BROKER.public.jwk, now=NOW, seen=seen)  # gaps are fine


class TestSDKAgainstTheBroker:
    def test_verified_directory_and_its_state(
        self, live_url: str, registry: None, token_for: Any, tmp_path: Path
    ) -> None:
        # A key, so that the directory is not empty.
        jwk = EncryptionKey.generate().public.jwk
        db.call(service.register, KeyIn(agency_id=HK, jwk=jwk), actor="test")
        state = tmp_path / "state"
        with BrokerClient(live_url, token_for("agency", agency_id=HK)) as client:
            keys = sdk.verified_directory(client, receipt_jwk(), state_dir=state)
            assert keys == client.jwks()
            kept = json.loads((state / sdk.STATE_FILE).read_text())
            token = sdk.fetch_directory(client)
            assert kept == {"version": 1, "sha256": sha256_b64u(token.encode())}
            with pytest.raises(sdk.DirectoryRefused) as wrong_pin:
                sdk.verified_directory(client, SigningKey.generate().public.jwk, state_dir=state)
            assert wrong_pin.value.code == "directory.bad_signature"
            expires = payload_of(token)["expires_at"]
            with pytest.raises(sdk.DirectoryRefused) as stale:
                sdk.verified_directory(client, receipt_jwk(), now=expires)
            assert stale.value.code == "directory.stale"
            # A partner that has seen version 5 is now shown version 1: a rollback.
            (state / sdk.STATE_FILE).write_text(json.dumps({"version": 5, "sha256": "z" * 43}))
            with pytest.raises(sdk.DirectoryRefused) as rollback:
                sdk.verified_directory(client, receipt_jwk(), state_dir=state)
            assert rollback.value.code == "directory.rollback"
            (state / sdk.STATE_FILE).write_text("{not json")
            with pytest.raises(sdk.DirectoryRefused) as broken:
                sdk.verified_directory(client, receipt_jwk(), state_dir=state)
            assert broken.value.code == "directory.bad_state"
