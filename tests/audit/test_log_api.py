"""The /v1/log API: signed checkpoints, proofs that an independent verifier accepts, leaf access."""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit import leaf
from broker.audit.models import AuditEvent
from broker.crypto import merkle, note
from tests.audit import rfc9162
from tests.audit.conftest import decode, leaves_of, record, scalars, sequence_all
from tests.conftest import bearer


def b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _exchanges() -> None:
    """Message-shaped events naming agencies the way the messaging domain records them."""
    from broker.audit import service

    events = []
    for sender, recipients in [
        ("VN-GDC", ["HK-CED", "KR-KCS"]),
        ("HK-CED", ["VN-GDC"]),
        ("VN-MPS", ["NZ-POL"]),
        ("VN-SPP", ["MZ-PGR"]),
    ]:
        details = {"sender": sender, "recipients": recipients, "offence": "narcotics"}
        events.append(service.event("msg.accepted", actor="fp", subject=sender, details=details))
        for r in recipients:
            details = {"sender": sender, "recipient": r, "mid": "m"}
            events.append(service.event("msg.fetched", actor="agency", subject=r, details=details))
    db.call(service.record_many, events)


class TestCheckpointAndKey:
    def test_checkpoint_verifies_with_the_published_key(
        self, api: Any, world: dict[str, Any], token_for: Any, log_key: str
    ) -> None:
        sequence_all()
        for role, binding in [
            ("admin", {}),
            ("agency", {"agency_id": "HK-CED"}),
            ("focal_point", {"focal_point_id": "VN-GDC/fp-hcm-01"}),
            ("auditor", {"audit_agencies": ["VN-GDC"]}),
        ]:
            headers = bearer(token_for(role, **binding))
            key = api.get("/v1/log/key", headers=headers)
            assert key.status_code == 200
            assert key.headers["content-type"].startswith("text/plain")
            assert key.text.strip() == log_key
            response = api.get("/v1/log/checkpoint", headers=headers)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            verifier = note.parse_verifier_key(key.text.strip())
            checkpoint = note.verify_checkpoint(response.text, verifier)
            assert checkpoint.origin == verifier.name
            assert checkpoint.size > 100

    def test_no_checkpoint_before_the_first_run(self, api: Any, oversight: dict[str, str]) -> None:
        response = api.get("/v1/log/checkpoint", headers=oversight)
        assert response.status_code == 404
        assert response.json()["code"] == "log.no_checkpoint"
        proof = api.get("/v1/log/proof/inclusion", params={"index": 0}, headers=oversight)
        assert proof.json()["code"] == "log.no_checkpoint"

    def test_key_and_checkpoint_need_a_token(self, api: Any) -> None:
        for path in ("/v1/log/key", "/v1/log/checkpoint", "/v1/log/proof/inclusion"):
            assert api.get(path).status_code == 401


class TestProofs:
    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        batches=st.lists(st.integers(1, 70), min_size=1, max_size=3),
        batch_size=st.integers(1, 40),
        picks=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=6),
    )
    def test_served_proofs_verify_independently(
        self,
        api: Any,
        oversight: dict[str, str],
        batches: list[int],
        batch_size: int,
        picks: list[tuple[float, float]],
    ) -> None:
        from broker.audit import sequencer

        async def sequence_in_batches(s: AsyncSession) -> None:
            while await sequencer.sequence(s, max_batch=batch_size):
                pass

        for n in batches:
            record(n)
            db.call(sequence_in_batches)
        leaves = leaves_of(api, oversight)
        hashes = [rfc9162.leaf_hash(b64d(x["leaf"])) for x in leaves]
        assert [b64d(x["hash"]) for x in leaves] == hashes
        total = len(hashes)
        for a, b in picks:
            size = max(1, round(a * total))
            index = min(size - 1, int(b * size))
            inc = api.get(
                "/v1/log/proof/inclusion", params={"index": index, "size": size}, headers=oversight
            ).json()
            assert set(inc) == {"leafIdx", "treeSize", "leafHash", "root", "proof"}
            assert (inc["leafIdx"], inc["treeSize"]) == (index, size)
            assert b64d(inc["leafHash"]) == hashes[index]
            assert b64d(inc["root"]) == rfc9162.mth(hashes[:size])
            proof = [b64d(p) for p in inc["proof"]]
            assert proof == rfc9162.path(index, hashes[:size])
            assert rfc9162.verify_inclusion(
                hashes[index], index, size, proof, rfc9162.mth(hashes[:size])
            )
            size1 = max(1, int(b * size))
            con = api.get(
                "/v1/log/proof/consistency",
                params={"from": size1, "to": size},
                headers=oversight,
            ).json()
            assert set(con) == {"size1", "size2", "root1", "root2", "proof"}
            assert (con["size1"], con["size2"]) == (size1, size)
            root1, root2 = rfc9162.mth(hashes[:size1]), rfc9162.mth(hashes[:size])
            assert (b64d(con["root1"]), b64d(con["root2"])) == (root1, root2)
            proof = [b64d(p) for p in con["proof"]]
            assert proof == rfc9162.proof(size1, hashes[:size])
            assert rfc9162.verify_consistency(size1, size, proof, root1, root2)
        # Defaults: the latest checkpoint.
        latest = api.get("/v1/log/proof/inclusion", params={"index": 0}, headers=oversight)
        assert latest.json()["treeSize"] == total

    def test_out_of_range_is_a_clear_422(self, api: Any, oversight: dict[str, str]) -> None:
        record(5)
        sequence_all()
        n = note.Checkpoint.parse(
            api.get("/v1/log/checkpoint", headers=oversight).text.split("\n\n")[0] + "\n"
        ).size
        cases = [
            ("/v1/log/proof/inclusion", {"index": n, "size": n}, "log.out_of_range"),
            ("/v1/log/proof/inclusion", {"index": 0, "size": n + 1}, "log.out_of_range"),
            ("/v1/log/proof/inclusion", {"index": -1}, "request.invalid"),
            ("/v1/log/proof/inclusion", {"index": 2**70}, "request.invalid"),
            ("/v1/log/proof/consistency", {"from": 0, "to": 3}, "request.invalid"),
            ("/v1/log/proof/consistency", {"from": 4, "to": 3}, "log.out_of_range"),
            ("/v1/log/proof/consistency", {"from": 1, "to": n + 1}, "log.out_of_range"),
            ("/v1/log/proof/consistency", {"from": "x"}, "request.invalid"),
        ]
        for path, params, code in cases:
            response = api.get(path, params=params, headers=oversight)
            assert response.status_code == 422, (path, params, response.text)
            assert response.json()["code"] == code
        same = api.get("/v1/log/proof/consistency", params={"from": n}, headers=oversight).json()
        assert same["proof"] == []
        assert same["root1"] == same["root2"]

    def test_nodes_are_the_subtrees_of_the_leaves(
        self, api: Any, oversight: dict[str, str]
    ) -> None:
        record(37)
        sequence_all()
        hashes = [b64d(x["hash"]) for x in leaves_of(api, oversight)][:37]
        store = merkle.MemoryTreeStore.from_leaf_hashes(hashes)
        for level in range(6):
            page = api.get(
                "/v1/log/nodes", params={"level": level, "end": 37 >> level}, headers=oversight
            ).json()
            assert [b64d(h) for h in page["hashes"]] == store.levels[level]
        beyond = api.get("/v1/log/nodes", params={"level": 40}, headers=oversight).json()
        assert beyond["hashes"] == []


class TestLeafAccess:
    """Auditors read leaves naming agencies they oversee; agencies read leaves naming them."""

    CALLERS: ClassVar[list[tuple[str, dict[str, Any], set[str] | None]]] = [
        ("auditor", {}, None),
        ("auditor", {"audit_agencies": ["VN-GDC", "HK-CED"]}, {"VN-GDC", "HK-CED"}),
        ("auditor", {"audit_agencies": ["MZ-PGR"]}, {"MZ-PGR"}),
        ("auditor", {"audit_agencies": []}, set()),
        ("agency", {"agency_id": "HK-CED"}, {"HK-CED"}),
        ("agency", {"agency_id": "NZ-POL"}, {"NZ-POL"}),
    ]

    def test_each_caller_reads_exactly_the_leaves_naming_its_agencies(
        self, api: Any, world: dict[str, Any], token_for: Any, oversight: dict[str, str]
    ) -> None:
        _exchanges()
        sequence_all()
        everything = [decode(x) for x in leaves_of(api, oversight)]
        agencies = {a["id"] for a in world["agencies"]}
        assert [d["index"] for d in everything] == list(range(len(everything)))
        for role, binding, visible in self.CALLERS:
            headers = bearer(token_for(role, **binding))
            sequence_all()  # the new principal and token events
            got = [decode(x) for x in leaves_of(api, headers)]
            if visible is None:
                assert len(got) >= len(everything)
                continue
            limit = everything[-1]["index"] + 1
            expected = [
                d["index"] for d in everything if leaf.agencies_named(d, agencies) & visible
            ]
            assert [d["index"] for d in got if d["index"] < limit] == expected, (role, binding)
            assert all(leaf.agencies_named(d, agencies) & visible for d in got)
        # The message-shaped events: recipients lists count, on both databases.
        hk = [d for d in everything if leaf.agencies_named(d, {"HK-CED"})]
        assert {d["kind"] for d in hk} >= {"msg.accepted", "msg.fetched", "agency.created"}

    def test_pages_follow_next_without_gaps(
        self, api: Any, world: dict[str, Any], token_for: Any
    ) -> None:
        _exchanges()
        sequence_all()
        headers = bearer(token_for("agency", agency_id="VN-GDC"))
        all_at_once = api.get("/v1/log/leaves", headers=headers).json()["leaves"]
        paged: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            body = api.get(
                "/v1/log/leaves", params={"start": start, "limit": 3}, headers=headers
            ).json()
            assert len(body["leaves"]) <= 3
            paged += body["leaves"]
            start = body["next"]
        assert paged == all_at_once
        assert len(paged) > 3

    def test_admins_and_focal_points_read_no_leaves(
        self, api: Any, world: dict[str, Any], token_for: Any
    ) -> None:
        record(2)
        sequence_all()
        for role, binding in [
            ("admin", {}),
            ("focal_point", {"focal_point_id": "VN-GDC/fp-hcm-01"}),
        ]:
            response = api.get("/v1/log/leaves", headers=bearer(token_for(role, **binding)))
            assert response.status_code == 403
            assert response.json()["code"] == "auth.forbidden"

    def test_reading_leaves_is_itself_on_the_log(
        self, api: Any, world: dict[str, Any], token_for: Any
    ) -> None:
        sequence_all()
        api.get(
            "/v1/log/leaves",
            params={"start": 2, "end": 9},
            headers=bearer(token_for("agency", agency_id="HK-CED")),
        )
        (event,) = scalars(select(AuditEvent).where(AuditEvent.kind == "audit.queried"))
        assert event.actor.startswith("agency:")
        assert event.details["query"] == "log.leaves"
        assert event.details["range"] == [2, 9]

    @pytest.mark.parametrize(
        "params",
        [
            {"start": -1},
            {"start": 2**70},
            {"start": 5, "end": 2},
            {"end": 0},
            {"limit": 0},
            {"limit": 5000},
            {"start": "x"},
            {"start": 10**15, "end": 10**15 + 5},
        ],
    )
    def test_odd_ranges_never_500(
        self, api: Any, oversight: dict[str, str], params: dict[str, Any]
    ) -> None:
        record(3)
        sequence_all()
        response = api.get("/v1/log/leaves", params=params, headers=oversight)
        assert response.status_code in (200, 422), response.text
        nodes = api.get("/v1/log/nodes", params=params, headers=oversight)
        assert nodes.status_code in (200, 422), nodes.text
