"""Who may read an operation's results, what a figure's filters accept, and the operation
documents' coordinator and phases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.results.conftest import ALPHA, BRAVO, Scene, generate, iso, operation_doc, token

ROUTES = ("results", "results.csv", "results/feedback")


def get(scene: Scene, headers: dict[str, str], op: str, route: str = "results", **q: str) -> Any:
    return scene.exchange.client.get(f"/v1/operations/{op}/{route}", params=q, headers=headers)


@pytest.fixture
def small(scene: Scene) -> Scene:
    generate(scene, 40, seed=7)
    return scene


@pytest.mark.parametrize("route", ROUTES)
def test_the_coordinator_reads_its_operation_only(small: Scene, route: str) -> None:
    vn_agency = token(small, "agency", agency_id="VN-GDC")
    vn_fp = token(small, "focal_point", focal_point_id="VN-GDC/fp-hcm-01")
    for headers in (vn_agency, vn_fp):
        assert get(small, headers, ALPHA, route).status_code == 200
        # A member of BRAVO, which KR-KCS coordinates.
        refused = get(small, headers, BRAVO, route)
        assert refused.status_code == 403
        assert refused.json()["code"] == "auth.forbidden"
    # A member that does not coordinate, and an agency that is no member.
    for agency in ("HK-CED", "JP-JC"):
        refused = get(small, token(small, "agency", agency_id=agency), ALPHA, route)
        assert (refused.status_code, refused.json()["code"]) == (403, "auth.forbidden")


@pytest.mark.parametrize("route", ROUTES)
def test_auditors_need_a_member_they_oversee(small: Scene, route: str) -> None:
    assert (
        get(small, token(small, "auditor", audit_agencies=["TH-CUS"]), ALPHA, route).status_code
        == 200
    )
    refused = get(small, token(small, "auditor", audit_agencies=["TH-CUS"]), BRAVO, route)
    assert (refused.status_code, refused.json()["code"]) == (403, "audit.not_overseen")
    refused = get(small, token(small, "auditor", audit_agencies=["JP-JC"]), ALPHA, route)
    assert refused.status_code == 403


@pytest.mark.parametrize("route", ROUTES)
def test_an_unknown_operation_is_404(small: Scene, route: str) -> None:
    for headers in (token(small, "auditor"), token(small, "agency", agency_id="VN-GDC")):
        missing = get(small, headers, "NO-SUCH-OP", route)
        assert (missing.status_code, missing.json()["code"]) == (404, "request.not_found")


def test_admins_are_refused_by_the_role_gate(small: Scene, admin_headers: dict[str, str]) -> None:
    refused = get(small, admin_headers, ALPHA)
    assert (refused.status_code, refused.json()["code"]) == (403, "auth.forbidden")


def test_an_auditors_reads_are_on_the_log(small: Scene) -> None:
    from sqlalchemy import select

    from broker import db
    from broker.audit.models import AuditEvent

    assert get(small, token(small, "auditor"), ALPHA, phase="alpha-1").status_code == 200
    assert get(small, token(small, "agency", agency_id="VN-GDC"), ALPHA).status_code == 200

    async def queries(s: Any) -> list[dict[str, Any]]:
        stmt = select(AuditEvent.details).where(AuditEvent.kind == "audit.queried")
        return [
            d for d in (await s.scalars(stmt)).all() if d.get("query", "").startswith("results")
        ]

    found = db.call(queries)
    assert len(found) == 1  # the auditor's, not the coordinator's
    assert found[0]["filters"] == {"operation": ALPHA, "phase": "alpha-1"}


@pytest.mark.parametrize(
    ("query", "pointer"),
    [
        ({"phase": "alpha-9"}, "/query/phase"),
        ({"week": "2026-W60"}, "/query/week"),
        ({"week": "W49"}, "/query/week"),
        ({"week": "9999-W52"}, "/query/week"),  # its week ends after the last date
        ({"agency": "vn-gdc"}, "/query/agency"),
        ({"outcome": "none"}, "/query/outcome"),
        ({"commodity": "gold"}, "/query/commodity"),
        ({"quantity_band": "\x00"}, "/query/quantity_band"),
    ],
)
def test_bad_filters_are_422(small: Scene, query: dict[str, str], pointer: str) -> None:
    r = get(small, token(small, "auditor"), ALPHA, "results/feedback", **query)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "audit.bad_filter"
    assert r.json()["errors"][0]["pointer"] == pointer


def test_a_bad_cursor_is_422(small: Scene) -> None:
    for cursor in (
        "nope",
        "2026-12-07T00:00:00~x",
        "2026-12-07T00:00:00~" + "0" * 32,  # no time zone
        "0001-01-01T00:00:00+01:00~" + "0" * 32,  # before the first UTC instant
    ):
        r = get(small, token(small, "auditor"), ALPHA, "results/feedback", cursor=cursor)
        assert (r.status_code, r.json()["code"]) == (422, "audit.bad_cursor"), cursor


def test_a_week_inside_a_phase(small: Scene) -> None:
    """A week filter with a phase counts the feedback of that phase in that week."""
    auditor = token(small, "auditor")
    body = get(small, auditor, ALPHA).json()
    for g in body["groups"]:
        q = {d: g[d] for d in ("phase", "week") if g[d] is not None}
        if g["phase"] is None:
            q["phase"] = "outside"
        expected = sum(
            x["count"] for x in body["groups"] if (x["phase"], x["week"]) == (g["phase"], g["week"])
        )
        page = get(small, auditor, ALPHA, "results/feedback", **q).json()
        assert page["total"] == expected


# --- the operation documents -------------------------------------------------------------


def _put(scene: Scene, admin: dict[str, str], doc: dict[str, Any]) -> Any:
    return scene.exchange.client.put(f"/v1/admin/operations/{doc['id']}", json=doc, headers=admin)


def test_the_coordinator_must_be_a_member(scene: Scene, admin_headers: dict[str, str]) -> None:
    doc = {**scene.operations[BRAVO], "coordinator": "HK-CED"}
    r = _put(scene, admin_headers, doc)
    assert (r.status_code, r.json()["code"]) == (422, "registry.not_a_party")
    assert r.json()["errors"] == [{"pointer": "/coordinator", "detail": "not a member"}]


def test_phases_are_checked_field_by_field(scene: Scene, admin_headers: dict[str, str]) -> None:
    t0 = scene.t0
    phases = [
        ("ok", 0, 2),
        ("inverted", 3, 2),  # ends before it starts
        ("overlaps", 1, 4),  # starts before "inverted" ends... and "ok" ends
        ("ok", 5, 6),  # a name used twice
        ("late", 7, 9),  # ends after the operation
        ("outside", 7, 8),  # the reserved name
    ]
    doc = operation_doc(
        "RESULTS-CHARLIE", "VN-KR-CUSTOMS", ["KR-KCS", "VN-GDC"], "KR-KCS", t0, phases
    )
    doc["phases"].insert(
        0, {"name": "early", "starts_at": iso(t0 - timedelta(days=1)), "ends_at": iso(t0)}
    )
    r = scene.exchange.client.post("/v1/admin/operations", json=doc, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "registry.bad_validity"
    pointers = {(e["pointer"], e["detail"]) for e in r.json()["errors"]}
    assert pointers == {
        ("/phases/0/starts_at", "before the operation starts"),
        ("/phases/2/ends_at", "not after starts_at"),
        (
            "/phases/3/starts_at",
            "before the previous phase ends (phases are in order, not overlapping)",
        ),
        ("/phases/4/name", "'ok' is used by an earlier phase"),
        ("/phases/5/ends_at", "after the operation ends"),
        (
            "/phases/6/starts_at",
            "before the previous phase ends (phases are in order, not overlapping)",
        ),
        ("/phases/6/name", "'outside' is reserved"),
    }


def test_phases_are_checked_by_the_schema(scene: Scene, admin_headers: dict[str, str]) -> None:
    doc = {**scene.operations[ALPHA], "phases": [{"name": "Phase One", "starts_at": "soon"}]}
    r = _put(scene, admin_headers, doc)
    assert (r.status_code, r.json()["code"]) == (422, "registry.invalid_document")
    pointers = {e["pointer"] for e in r.json()["errors"]}
    assert {"/phases/0/name", "/phases/0/starts_at"} <= pointers


def test_the_world_operations_have_coordinators_and_phases(world: dict[str, Any]) -> None:
    ops = {op["id"]: op for op in world["operations"]}
    assert ops["MEKONG-DRAGON-V"]["coordinator"] == "VN-GDC"
    assert len(ops["MEKONG-DRAGON-V"]["phases"]) == 4
    assert ops["MEKONG-DRAGON-V"]["phases"][0]["starts_at"] == ops["MEKONG-DRAGON-V"]["starts_at"]
    assert ops["MEKONG-DRAGON-V"]["phases"][-1]["ends_at"] == ops["MEKONG-DRAGON-V"]["ends_at"]
    assert ops["TWIN-GUARDIAN-II"]["coordinator"] == "KR-KCS"


def test_the_mekong_dragon_phase_results(scene: Scene) -> None:
    """The world's operation: HK-CED's seizure feedback on a Mekong Dragon V alert counts in
    the phase of today, for the coordinator VN-GDC (what `broker demo` shows)."""
    from datetime import UTC, datetime

    from tests.messages.conftest import seizure_feedback

    ex = scene.exchange
    response, alert, _ = ex.send(
        recipients=["CN-GACC", "HK-CED", "KR-KCS"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
    )
    assert response.status_code == 201, response.text
    routing = seizure_feedback(ex, alert["mid"])
    assert ex.submit(ex.envelope(routing), routing).status_code == 201
    now = datetime.now(UTC)
    doc = next(
        o
        for o in ex.client.get("/v1/admin/operations", headers=token(scene, "admin")).json()
        if o["id"] == "MEKONG-DRAGON-V"
    )["document"]
    phase = next(
        p["name"]
        for p in doc["phases"]
        if datetime.fromisoformat(p["starts_at"]) <= now < datetime.fromisoformat(p["ends_at"])
    )
    r = get(
        scene,
        token(scene, "focal_point", focal_point_id="VN-GDC/fp-hcm-01"),
        "MEKONG-DRAGON-V",
        phase=phase,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 1
    assert body["groups"] == [
        {
            "phase": phase,
            "week": body["groups"][0]["week"],
            "agency": "HK-CED",
            "outcome": "seized",
            "commodity": "narcotics",
            "quantity_band": "10_100kg",
            "count": 1,
        }
    ]
    assert [p["name"] for p in body["phases"]] == [
        "p1-intelligence",
        "p2-targeting",
        "p3-interdiction",
        "p4-follow-up",
    ]


def test_a_corrected_feedback_counts_once_as_corrected(scene: Scene) -> None:
    """HK-CED reports a seizure, then corrects it to no find: the figures count the correction."""
    alert = scene.alerts[ALPHA][0]
    at = scene.t0 + timedelta(days=1)
    first = scene.reply(
        at,
        alert,
        "HK-CED",
        operation=ALPHA,
        counted_for=ALPHA,
        outcome="seized",
        commodity="narcotics",
        quantity_band="10_100kg",
    )
    later = scene.reply(
        at + timedelta(hours=2),
        alert,
        "HK-CED",
        operation=ALPHA,
        counted_for=ALPHA,
        outcome="no_find",
        commodity=None,
        quantity_band=None,
        supersedes=first.mid,
    )
    coordinator = token(scene, "agency", agency_id="VN-GDC")
    body = get(scene, coordinator, ALPHA).json()
    assert body["total"] == 1
    assert body["by_outcome"] == [{"value": "no_find", "count": 1}]
    page = get(scene, coordinator, ALPHA, "results/feedback").json()
    assert [x["mid"] for x in page["items"]] == [later.mid]
