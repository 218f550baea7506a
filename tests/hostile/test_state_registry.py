"""Model-based test of the registry (research 7.3 B2): a Hypothesis state machine over the admin API.

Rules drive the admin HTTP API as a registrar would, mistakes included: agencies and focal
points, signing and encryption keys (register, rotate, retire, revoke with and without
`compromised_since`), agreements (create, new version, suspend), principals and tokens (issue,
revoke, use). A plain in-memory model says what each request must answer. Every step checks:

- the status is the one the model predicts (never a 500);
- the audit events it added are exactly the ones the change implies (one per changed object:
  a rotation registers one key and retires another), and a refused request added none;
- a refused request changed nothing (the registry's tables read the same before and after);

and after every step that changed something the invariant compares the API's lists with the
model and asks the directory which keys are valid now: never a retired or revoked one.

Each example (sequence of steps) starts from empty tables. Budget: `state_settings` in
tests/hostile/conftest.py (STATE_EXAMPLES / STATE_STEPS for the long form).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.crypto.keys import EncryptionKey, SigningKey
from tests.conftest import bearer
from tests.hostile.conftest import audit_events_since, make_token, state_settings, wipe

pytestmark = pytest.mark.hostile

SETTINGS = state_settings(examples=15, steps=20)
TALLY: Counter[int] = Counter()  # status -> requests, over the run (printed for the docs)

AGENCIES = {
    "VN-GDC": ("VN", "customs"),
    "HK-CED": ("HK", "customs"),
    "KR-KCS": ("KR", "customs"),
    "NZ-POL": ("NZ", "police"),
}
SLUGS = ["fp-01", "fp-hcm-01"]
AGREEMENTS = ["AGR-ONE", "AGR-TWO"]
# Inputs the registry must refuse without changing anything.
BAD_AGENCY_IDS = ["vn-gdc", "ＶＮ-GDC", "VN_GDC", "VN-GDC\x00", "VN-" + "X" * 11, "VN-GDC "]


def agreement_doc(agreement_id: str, parties: list[str], status: str = "active") -> dict[str, Any]:
    return {
        "id": agreement_id,
        "title": f"Test agreement {agreement_id}",
        "kind": "customs_mutual_assistance",
        "parties": sorted(parties),
        "offences": ["cites_wildlife", "narcotics"],
        "subject_types": ["person", "shipment"],
        "valid_from": "2020-01-01",
        "valid_until": None,
        "status": status,
        "exclusions": [],
        "assurances": [],
        "max_handling": "TLP:AMBER",
        "onward_sharing": "originator_consent",
        "retention": "P5Y",
        "ack_deadline": "PT24H",
    }


@dataclass
class KeyModel:
    agency: str
    focal_point: str | None
    use: str
    jwk: dict[str, Any]
    status: str = "active"
    compromised_since: datetime | None = None


@dataclass
class Model:
    agencies: set[str] = field(default_factory=set)
    focal_points: dict[str, str] = field(default_factory=dict)  # id -> agency
    keys: dict[str, KeyModel] = field(default_factory=dict)  # kid -> key
    agreements: dict[str, list[str]] = field(default_factory=dict)  # id -> status per version
    parties: dict[str, list[str]] = field(default_factory=dict)  # agreement id -> parties
    principals: set[str] = field(default_factory=set)
    tokens: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (secret, revoked)


def registry_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Everything a registry request can change, as plain rows (for "nothing changed")."""
    queries = {
        "agencies": "select id, status from agencies",
        "focal_points": "select id, agency_id, status from focal_points",
        "keys": "select kid, status, revoked_at, retired_at, compromised_since from keys",
        "agreements": "select agreement_id, version, sha256 from agreement_versions",
        "principals": "select name, role, status from principals",
        "credentials": "select id, revoked_at from credentials",
    }

    async def read(s: AsyncSession) -> dict[str, list[tuple[Any, ...]]]:
        return {
            name: sorted(map(tuple, (await s.execute(text(sql))).all()))
            for name, sql in queries.items()
        }

    return db.call(read)


class RegistryMachine(RuleBasedStateMachine):
    """The admin registry against a model; one instance per example, on empty tables."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        wipe()
        self.client = client
        self.headers = bearer(make_token("admin"))
        self.model = Model()
        self.seen: set[Any] = set()
        audit_events_since(self.seen)  # the admin principal's own events are the baseline
        self.steps: list[str] = []
        self.changed = True  # whether the lists need comparing again (a refusal changes nothing)

    # -- the check every request goes through -------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        expect: int,
        events: list[str] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send one request; check its status, its audit events, and that a refusal changed nothing."""
        refused = expect >= 400
        before = registry_rows() if refused else None
        response = self.client.request(method, path, headers=headers or self.headers, **kwargs)
        self.steps.append(f"{method} {path} -> {response.status_code}")
        TALLY[response.status_code] += 1
        self.changed |= response.status_code < 400
        assert response.status_code != 500, response.text
        assert response.status_code == expect, (
            f"{method} {path}: expected {expect}, got {response.status_code}: {response.text[:400]}"
        )
        added = sorted(kind for kind, _ in audit_events_since(self.seen))
        assert added == sorted(events or []), f"{method} {path}: audit events {added} != {events}"
        if refused:
            assert registry_rows() == before, f"{method} {path} refused but changed the registry"
            problem = response.json()
            assert problem["type"].startswith("urn:exchange-broker:problem:"), problem
        return response

    def _agency(self, data: st.DataObject) -> str:
        """A registered agency three times in four, any agency of the pool otherwise."""
        known = st.sampled_from(sorted(self.model.agencies or AGENCIES))
        return data.draw(st.one_of(known, known, known, st.sampled_from(sorted(AGENCIES))))

    # -- agencies and focal points ----------------------------------------------------------

    @initialize(
        agencies=st.lists(st.sampled_from(sorted(AGENCIES)), min_size=2, max_size=3, unique=True)
    )
    def some_agencies(self, agencies: list[str]) -> None:
        """Start from a few agencies with a focal point each, so that rules reach deep states."""
        for agency in agencies:
            self.create_agency(agency)
            self.create_focal_point(agency, SLUGS[0])
            for owner, use in [(f"{agency}/{SLUGS[0]}", "sig"), (agency, "enc")]:
                self._register(owner, use)

    @precondition(lambda self: len(self.model.agencies) < len(AGENCIES))
    @rule(agency=st.sampled_from(sorted(AGENCIES)))
    def create_agency(self, agency: str) -> None:
        country, kind = AGENCIES[agency]
        fresh = agency not in self.model.agencies
        self.call(
            "POST",
            "/v1/admin/agencies",
            json={"id": agency, "name": f"Agency {agency}", "country": country, "kind": kind},
            expect=201 if fresh else 409,
            events=["agency.created"] if fresh else [],
        )
        self.model.agencies.add(agency)

    @rule(
        bad=st.one_of(
            st.sampled_from(BAD_AGENCY_IDS).map(lambda i: {"id": i, "country": "VN"}),
            st.just({"id": "ZZ-NOWHERE", "country": "ZZ"}),  # not ISO 3166-1
            st.just({"id": "VN-GDC", "country": "VN", "status": "suspended"}),  # mass assignment
        )
    )
    def create_agency_invalid(self, bad: dict[str, Any]) -> None:
        body = {"name": "Bad agency", "kind": "customs", **bad}
        self.call("POST", "/v1/admin/agencies", json=body, expect=422)

    @rule(data=st.data(), slug=st.sampled_from(SLUGS))
    def add_focal_point(self, data: st.DataObject, slug: str) -> None:
        self.create_focal_point(self._agency(data), slug)

    def create_focal_point(self, agency: str, slug: str) -> None:
        fp = f"{agency}/{slug}"
        if agency not in self.model.agencies:
            expect, events = 422, []  # UnknownAgency
        elif fp in self.model.focal_points:
            expect, events = 409, []
        else:
            expect, events = 201, ["focal_point.created"]
        self.call(
            "POST",
            f"/v1/admin/agencies/{agency}/focal-points",
            json={"id": fp, "name": f"Desk {fp}", "role": "liaison officer"},
            expect=expect,
            events=events,
        )
        if expect == 201:
            self.model.focal_points[fp] = agency

    @precondition(lambda self: self.model.agencies)
    @rule(data=st.data())
    def create_focal_point_elsewhere(self, data: st.DataObject) -> None:
        """A focal point whose id names another agency than the path's."""
        agency = data.draw(st.sampled_from(sorted(self.model.agencies)))
        other = data.draw(st.sampled_from(sorted(set(AGENCIES) - {agency})))
        self.call(
            "POST",
            f"/v1/admin/agencies/{agency}/focal-points",
            json={"id": f"{other}/fp-x1", "name": "Desk", "role": "officer"},
            expect=422,
        )

    # -- keys ---------------------------------------------------------------------------------

    def _new_jwk(self, use: str) -> dict[str, Any]:
        key = SigningKey.generate() if use == "sig" else EncryptionKey.generate()
        return dict(key.public.jwk)

    @precondition(lambda self: self.model.agencies)
    @rule(data=st.data(), use=st.sampled_from(["sig", "enc"]))
    def register_key(self, data: st.DataObject, use: str) -> None:
        """A valid key: a focal point's or an agency's signing key, an agency's encryption key."""
        owners = sorted(self.model.agencies) + (
            sorted(self.model.focal_points) if use == "sig" else []
        )
        self._register(data.draw(st.sampled_from(owners)), use)

    def _register(self, owner: str, use: str) -> None:
        agency, fp = owner.split("/")[0], owner if "/" in owner else None
        jwk = self._new_jwk(use)
        body: dict[str, Any] = {"agency_id": agency, "jwk": jwk, "focal_point_id": fp}
        response = self.call(
            "POST", "/v1/admin/keys", json=body, expect=201, events=["key.registered"]
        )
        self.model.keys[response.json()["kid"]] = KeyModel(agency, fp, use, jwk)

    @rule(
        flaw=st.sampled_from(
            [
                "private",
                "duplicate",
                "wrong_curve",
                "garbage",
                "unknown_agency",
                "enc_for_person",
                "unknown_focal_point",
                "other_agency_focal_point",
            ]
        ),
        use=st.sampled_from(["sig", "enc"]),
    )
    def register_key_invalid(self, flaw: str, use: str) -> None:
        agency = min(self.model.agencies, default="VN-GDC")
        jwk = self._new_jwk(use)
        body: dict[str, Any] = {"agency_id": agency, "jwk": jwk}
        expect = 422
        if flaw == "private":
            jwk["d"] = jwk["x"]
        elif flaw == "wrong_curve":
            jwk["crv"] = "X25519" if use == "sig" else "Ed25519"
        elif flaw == "garbage":
            body["jwk"] = {"kty": "OKP", "crv": "Ed25519", "x": "!!not-base64!!"}
        elif flaw == "unknown_agency":
            body["agency_id"] = next(
                a for a in [*AGENCIES, "XX-NONE"] if a not in self.model.agencies
            )
        elif flaw == "enc_for_person":
            body["jwk"] = self._new_jwk("enc")
            body["focal_point_id"] = f"{agency}/{SLUGS[0]}"
        elif flaw == "unknown_focal_point":
            body["focal_point_id"] = f"{agency}/fp-none"
        elif flaw == "other_agency_focal_point":
            others = [fp for fp, a in self.model.focal_points.items() if a != agency]
            body["focal_point_id"] = others[0] if others else "XX-NONE/fp-01"
        elif self.model.keys:  # the same public key again
            known = self.model.keys[sorted(self.model.keys)[0]]
            body = {"agency_id": known.agency, "jwk": known.jwk}
            expect = 409
        else:
            return  # nothing registered yet to duplicate
        self.call("POST", "/v1/admin/keys", json=body, expect=expect)

    def _pick_key(self, data: st.DataObject) -> str:
        """A registered key, mostly; now and then one that does not exist."""
        unknown = "A" * 43
        known = st.sampled_from(sorted(self.model.keys))
        return data.draw(st.one_of(known, known, known, st.just(unknown)))

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data(), same_use=st.sampled_from([True, True, True, False]))
    def rotate_key(self, data: st.DataObject, same_use: bool) -> None:
        kid = self._pick_key(data)
        old = self.model.keys.get(kid)
        use = (old.use if same_use else {"sig": "enc", "enc": "sig"}[old.use]) if old else "sig"
        jwk = self._new_jwk(use)
        if old is None:
            expect = 404
        elif not same_use:
            expect = 422  # KeyBinding: a key is rotated to a key of the same use
        elif old.status != "active":
            expect = 409  # KeyNotActive: and the successor must not stay registered
        else:
            expect = 201
        response = self.call(
            "POST",
            f"/v1/admin/keys/{kid}/rotate",
            json={"jwk": jwk},
            expect=expect,
            events=["key.registered", "key.retired"] if expect == 201 else [],
        )
        if expect == 201:
            assert old is not None
            old.status = "retired"
            new = response.json()
            assert (new["agency_id"], new["focal_point_id"]) == (old.agency, old.focal_point)
            self.model.keys[new["kid"]] = KeyModel(old.agency, old.focal_point, use, jwk)

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data())
    def retire_key(self, data: st.DataObject) -> None:
        kid = self._pick_key(data)
        key = self.model.keys.get(kid)
        expect = 404 if key is None else 200 if key.status == "active" else 409
        self.call(
            "POST",
            f"/v1/admin/keys/{kid}/retire",
            expect=expect,
            events=["key.retired"] if expect == 200 else [],
        )
        if expect == 200:
            assert key is not None
            key.status = "retired"

    @precondition(lambda self: self.model.keys)
    @rule(
        data=st.data(),
        reason=st.sampled_from(["superseded", "key_compromise"]),
        since=st.none() | st.integers(min_value=-30 * 86400, max_value=3600),
    )
    def revoke_key(self, data: st.DataObject, reason: str, since: int | None) -> None:
        kid = self._pick_key(data)
        key = self.model.keys.get(kid)
        now = datetime.now(UTC).replace(microsecond=0)
        when = now + timedelta(seconds=since) if since is not None else None
        if key is None:
            expect = 404
        elif key.status == "revoked":
            expect = 409
        elif reason != "key_compromise":
            expect = 422 if when is not None and when > now + timedelta(seconds=5) else 200
        elif when is None:
            expect = 422  # compromised_since is required
        elif when > now + timedelta(seconds=5):
            expect = 422  # in the future (a few seconds of slack for the request itself)
        else:
            expect = 200
        if when is not None and now - timedelta(seconds=5) < when <= now + timedelta(seconds=5):
            return  # too close to "now" to predict: the clock moves during the request
        body: dict[str, Any] = {"reason": reason}
        if when is not None:
            body["compromised_since"] = when.isoformat()
        self.call(
            "POST",
            f"/v1/admin/keys/{kid}/revoke",
            json=body,
            expect=expect,
            events=["key.revoked"] if expect == 200 else [],
        )
        if expect == 200:
            assert key is not None
            key.status, key.compromised_since = "revoked", when

    # -- agreements -----------------------------------------------------------------------------

    @rule(agreement=st.sampled_from(AGREEMENTS), data=st.data())
    def create_agreement(self, agreement: str, data: st.DataObject) -> None:
        first = self._agency(data)
        parties = [first, data.draw(st.sampled_from(sorted(set(AGENCIES) - {first})))]
        if any(p not in self.model.agencies for p in parties):
            expect = 422  # UnknownParty
        elif agreement in self.model.agreements:
            expect = 409
        else:
            expect = 201
        self.call(
            "POST",
            "/v1/admin/agreements",
            json=agreement_doc(agreement, parties),
            expect=expect,
            events=["agreement.updated"] if expect == 201 else [],
        )
        if expect == 201:
            self.model.agreements[agreement] = ["active"]
            self.model.parties[agreement] = parties

    @rule(
        data=st.data(),
        status=st.sampled_from(["active", "suspended"]),
        mismatch=st.sampled_from([False, False, True]),
    )
    def propose_agreement(self, data: st.DataObject, status: str, mismatch: bool) -> None:
        """The administrator proposes a new version: the agreement itself does not change
        until its parties approve (tests/agreements/test_approvals.py)."""
        known = st.sampled_from(sorted(self.model.agreements or AGREEMENTS))
        agreement = data.draw(st.one_of(known, known, st.sampled_from(AGREEMENTS)))
        parties = self.model.parties.get(agreement, sorted(AGENCIES)[:2])
        doc = agreement_doc("AGR-OTHER" if mismatch else agreement, parties, status)
        if agreement not in self.model.agreements:
            expect = 404
        elif mismatch:
            expect = 422  # IdMismatch
        else:
            expect = 201
        self.call(
            "POST",
            f"/v1/agreements/{agreement}/proposals",
            json=doc,
            expect=expect,
            events=["agreement.proposed"] if expect == 201 else [],
        )

    @rule(bad=st.sampled_from(["bad_offence", "bad_status", "until_before_from", "extra"]))
    def create_agreement_invalid(self, bad: str) -> None:
        doc = agreement_doc("AGR-BAD", sorted(self.model.agencies)[:2] or ["VN-GDC", "HK-CED"])
        if bad == "bad_offence":
            doc["offences"] = ["jaywalking"]
        elif bad == "bad_status":
            doc["status"] = "ACTIVE"
        elif bad == "until_before_from":
            doc["valid_until"] = "2019-01-01"
        else:
            doc["sender_agency"] = "VN-GDC"
        self.call("POST", "/v1/admin/agreements", json=doc, expect=422)

    # -- principals and tokens ------------------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(["sys-a", "sys-b"]))
    def create_principal(self, data: st.DataObject, name: str) -> None:
        agency = self._agency(data)
        if name in self.model.principals:
            expect = 409
        elif agency not in self.model.agencies:
            expect = 422
        else:
            expect = 201
        response = self.call(
            "POST",
            "/v1/admin/principals",
            json={"name": name, "role": "agency", "agency_id": agency},
            expect=expect,
            events=["admin.changed", "token.issued"] if expect == 201 else [],
        )
        if expect == 201:
            self.model.principals.add(name)
            out = response.json()
            self.model.tokens[out["id"]] = (out["token"], False)

    @rule(data=st.data())
    def issue_token(self, data: st.DataObject) -> None:
        known = st.sampled_from(sorted(self.model.principals or {"sys-a"}))
        name = data.draw(st.one_of(known, known, st.just("nobody")))
        known = name in self.model.principals
        response = self.call(
            "POST",
            f"/v1/admin/principals/{name}/tokens",
            json={},
            expect=201 if known else 404,
            events=["token.issued"] if known else [],
        )
        if known:
            out = response.json()
            self.model.tokens[out["id"]] = (out["token"], False)

    @rule(data=st.data())
    def revoke_token(self, data: st.DataObject) -> None:
        token_id = data.draw(st.sampled_from([*sorted(self.model.tokens), str(uuid.uuid4())]))
        known = self.model.tokens.get(token_id)
        first = known is not None and not known[1]
        self.call(
            "POST",
            f"/v1/admin/tokens/{token_id}/revoke",
            expect=204 if known else 404,
            events=["token.revoked"] if first else [],  # revoking twice records it once
        )
        if known:
            self.model.tokens[token_id] = (known[0], True)

    @precondition(lambda self: self.model.tokens)
    @rule(data=st.data())
    def use_token(self, data: st.DataObject) -> None:
        secret, revoked = self.model.tokens[data.draw(st.sampled_from(sorted(self.model.tokens)))]
        self.call("GET", "/v1/me", headers=bearer(secret), expect=401 if revoked else 200)

    @rule(path=st.sampled_from(["/v1/admin/keys", "/v1/admin/agencies", "/v1/admin/agreements"]))
    def not_an_admin(self, path: str) -> None:
        """A token of another role is refused (403) on every admin write."""
        if not self.model.tokens:
            return
        secret, revoked = self.model.tokens[sorted(self.model.tokens)[0]]
        self.call("POST", path, headers=bearer(secret), json={}, expect=401 if revoked else 403)

    # -- invariants: the API's lists equal the model ----------------------------------------------

    def _get(self, path: str) -> Any:
        response = self.client.get(path, headers=self.headers)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    @invariant()
    def api_lists_equal_the_model(self) -> None:
        """After a change (a refusal is checked to have changed nothing), list and compare."""
        if not self.changed:
            return
        self.changed = False
        self.agencies_and_focal_points_listed()
        self.keys_listed()
        self.no_retired_or_revoked_key_is_valid_now()
        self.agreements_listed()
        self.principals_listed()

    def agencies_and_focal_points_listed(self) -> None:
        assert {a["id"] for a in self._get("/v1/admin/agencies")} == self.model.agencies
        listed = {fp["id"]: fp["agency_id"] for fp in self._get("/v1/admin/focal-points")}
        assert listed == self.model.focal_points

    def keys_listed(self) -> None:
        listed = {k["kid"]: k for k in self._get("/v1/admin/keys")}
        assert {kid: k["status"] for kid, k in listed.items()} == {
            kid: k.status for kid, k in self.model.keys.items()
        }, self.steps
        for kid, key in self.model.keys.items():
            got = listed[kid]
            assert (got["agency_id"], got["focal_point_id"], got["use"]) == (
                key.agency,
                key.focal_point,
                key.use,
            )
            since = got["compromised_since"]
            assert (datetime.fromisoformat(since) if since else None) == key.compromised_since

    def no_retired_or_revoked_key_is_valid_now(self) -> None:
        from broker.directory import service as directory

        now = datetime.now(UTC)

        async def read(s: AsyncSession) -> set[str]:
            return {
                k.kid
                for agency in self.model.agencies
                for use in ("sig", "enc")
                for k in await directory.usable_keys(s, agency, use, now)
            }

        usable = db.call(read)
        expected = {kid for kid, k in self.model.keys.items() if k.status == "active"}
        assert usable == expected, self.steps
        published = {k["kid"]: k["status"] for k in self._get("/v1/directory/jwks")["keys"]}
        for kid, key in self.model.keys.items():
            assert published[kid] == key.status

    def agreements_listed(self) -> None:
        listed = {a["id"]: (a["version"], a["status"]) for a in self._get("/v1/admin/agreements")}
        assert listed == {
            a: (len(versions), versions[-1]) for a, versions in self.model.agreements.items()
        }

    def principals_listed(self) -> None:
        names = {p["name"] for p in self._get("/v1/admin/principals")}
        assert self.model.principals <= names
        assert len(names - self.model.principals) == 1  # the machine's own admin


def test_registry_state_machine(client: Any, backend: str) -> None:
    TALLY.clear()
    run_state_machine_as_test(lambda: RegistryMachine(client), settings=SETTINGS)
    print(f"\nregistry state machine {backend}: {sum(TALLY.values())} requests, {dict(TALLY)}")
    assert all(TALLY[status] for status in (200, 201, 404, 409, 422)), TALLY


def test_superseded_with_future_compromise_refused(client: Any, admin_headers: Any) -> None:
    """`compromised_since` is the earliest time a key may have leaked: never in the future."""
    client.post(
        "/v1/admin/agencies",
        json={"id": "VN-GDC", "name": "Customs", "country": "VN", "kind": "customs"},
        headers=admin_headers,
    )
    kid = client.post(
        "/v1/admin/keys",
        json={"agency_id": "VN-GDC", "jwk": EncryptionKey.generate().public.jwk},
        headers=admin_headers,
    ).json()["kid"]
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    response = client.post(
        f"/v1/admin/keys/{kid}/revoke",
        json={"reason": "superseded", "compromised_since": future},
        headers=admin_headers,
    )
    assert response.status_code == 422, response.text
