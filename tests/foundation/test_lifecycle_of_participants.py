"""Suspending and reactivating agencies and focal points, disabling principals, ending
designations: who is refused where, what the log says, and that held deliveries arrive.

A suspension bites in three places: authentication (the tokens bound to a suspended focal
point or agency: `auth.principal_suspended`), the scope decision (`scope.focal_point_inactive`
for a request that authenticated before the suspension, and for `decide` over the registry
snapshot) and the relay (deliveries to a suspended agency wait, queued, and arrive in order
on reactivation).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from broker import db
from broker.agreements.policy import Accept, Reject, decide
from broker.audit.models import AuditEvent
from broker.ids import utcnow
from broker.messages import service as messages
from broker.registry import snapshot
from tests.conftest import bearer
from tests.inbox.conftest import HK, drain, focal_point, ledger, mekong
from tests.messages.conftest import Exchange, relay
from tests.messages.conftest import exchange as exchange  # the HTTP harness

HCM = "VN-GDC/fp-hcm-01"
HN = "VN-GDC/fp-hn-01"
REASON = {"reason": "MoU renewal pending"}


def events(kind: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(subject, details) of the log events of `kind`, in order."""

    async def read(s: AsyncSession) -> list[tuple[str | None, dict[str, Any]]]:
        rows = await s.execute(
            select(AuditEvent.subject, AuditEvent.details)
            .where(AuditEvent.kind == kind)
            .order_by(AuditEvent.created_at)
        )
        return [(subject, dict(details or {})) for subject, details in rows]

    return db.call(read)


def post(client: Any, path: str, headers: dict[str, str], body: Any = None) -> Any:
    return client.post(f"/v1/admin{path}", json=REASON if body is None else body, headers=headers)


def code(response: Any) -> str:
    return str(response.json()["code"])


class TestAgency:
    def test_a_suspended_agency_s_tokens_are_refused_until_it_is_reactivated(
        self, client: Any, world: dict[str, Any], token_for: Any, admin_headers: dict[str, str]
    ) -> None:
        fp = bearer(token_for("focal_point", focal_point_id=HN))
        agency = bearer(token_for("agency", agency_id="VN-GDC"))
        other = bearer(token_for("agency", agency_id=HK))
        suspended = post(client, "/agencies/VN-GDC/suspend", admin_headers)
        assert suspended.status_code == 200, suspended.text
        assert suspended.json()["status"] == "suspended"
        for headers in (fp, agency):
            refused = client.get("/v1/me", headers=headers)
            assert (refused.status_code, code(refused)) == (403, "auth.principal_suspended")
            assert "agency VN-GDC is suspended" in refused.json()["detail"]
        assert client.get("/v1/me", headers=other).status_code == 200
        again = post(client, "/agencies/VN-GDC/suspend", admin_headers)
        assert (again.status_code, code(again)) == (409, "registry.status_unchanged")
        back = post(client, "/agencies/VN-GDC/reactivate", admin_headers, {"reason": "renewed"})
        assert back.json()["status"] == "active"
        assert client.get("/v1/me", headers=fp).status_code == 200
        assert client.get("/v1/me", headers=agency).status_code == 200
        assert code(post(client, "/agencies/VN-GDC/reactivate", admin_headers)) == (
            "registry.status_unchanged"
        )
        # Each change once on the log, with its reason; the refused repeats are not there.
        assert events("agency.suspended") == [
            ("VN-GDC", {"agency": "VN-GDC", "note": "MoU renewal pending"})
        ]
        assert events("agency.reactivated") == [
            ("VN-GDC", {"agency": "VN-GDC", "note": "renewed", "released": 0})
        ]

    def test_requests_are_checked(
        self, client: Any, world: dict[str, Any], admin_headers: dict[str, str]
    ) -> None:
        assert post(client, "/agencies/XX-NOPE/suspend", admin_headers).status_code == 404
        for body in ({"reason": ""}, {"reason": "x" * 201}, {}, {"reason": "ok", "more": 1}):
            refused = post(client, "/agencies/VN-GDC/suspend", admin_headers, body)
            assert (refused.status_code, code(refused)) == (422, "request.invalid"), body
        assert events("agency.suspended") == []


class TestFocalPoint:
    def test_a_suspended_focal_point_is_refused_and_its_colleagues_are_not(
        self, client: Any, world: dict[str, Any], token_for: Any, admin_headers: dict[str, str]
    ) -> None:
        hcm = bearer(token_for("focal_point", focal_point_id=HCM))
        hn = bearer(token_for("focal_point", focal_point_id=HN))
        agency = bearer(token_for("agency", agency_id="VN-GDC"))
        done = post(client, f"/focal-points/{HCM}/suspend", admin_headers)
        assert (done.status_code, done.json()["status"]) == (200, "suspended")
        refused = client.get("/v1/me", headers=hcm)
        assert (refused.status_code, code(refused)) == (403, "auth.principal_suspended")
        assert f"focal point {HCM} is suspended" in refused.json()["detail"]
        assert client.get("/v1/me", headers=hn).status_code == 200
        assert client.get("/v1/me", headers=agency).status_code == 200
        again = post(client, f"/focal-points/{HCM}/suspend", admin_headers)
        assert (again.status_code, code(again)) == (409, "registry.status_unchanged")
        assert post(client, f"/focal-points/{HCM}/reactivate", admin_headers).status_code == 200
        assert client.get("/v1/me", headers=hcm).status_code == 200
        assert post(client, "/focal-points/VN-GDC/fp-nope/suspend", admin_headers).status_code == (
            404
        )
        assert [s for s, _ in events("focal_point.suspended")] == [HCM]
        assert events("focal_point.reactivated") == [
            (HCM, {"agency": "VN-GDC", "note": "MoU renewal pending"})
        ]

    def test_a_submit_that_authenticated_before_the_suspension_is_out_of_scope(
        self, exchange: Exchange, admin_headers: dict[str, str]
    ) -> None:
        # The token is refused from the suspension on; a request already past authentication
        # (the service called with its caller) meets `decide`, which refuses it on its own.
        assert post(exchange.client, f"/focal-points/{HCM}/suspend", admin_headers).status_code
        routing = exchange.routing(HCM)
        outcome = db.call(
            messages.submit, focal_point(HCM), exchange.envelope(routing), routing["mid"]
        )
        assert outcome.refusal is not None
        assert (outcome.status, outcome.refusal.code) == (403, "scope.focal_point_inactive")
        rejected = events("msg.rejected")
        assert rejected[-1][1]["reason"] == "scope.focal_point_inactive"
        # Over HTTP the same focal point's token stops at authentication.
        response, _, _ = exchange.send(fp=HCM)
        assert (response.status_code, code(response)) == (403, "auth.principal_suspended")
        # Back in service, it sends again.
        post(exchange.client, f"/focal-points/{HCM}/reactivate", admin_headers)
        response, _, _ = exchange.send(fp=HCM)
        assert response.status_code == 201, response.text


def _decision(exchange: Exchange, fp: str, *, days: int = 0) -> Accept | Reject:
    routing = exchange.routing(fp)
    snap = db.call(snapshot.load, None)
    return decide(snap.policy(routing), routing, utcnow() + timedelta(days=days))


class TestDecide:
    def test_decide_refuses_a_suspended_focal_point_and_every_focal_point_of_a_suspended_agency(
        self, exchange: Exchange, admin_headers: dict[str, str]
    ) -> None:
        client = exchange.client
        assert isinstance(_decision(exchange, HCM), Accept)
        post(client, f"/focal-points/{HCM}/suspend", admin_headers)
        refused = _decision(exchange, HCM)
        assert isinstance(refused, Reject)
        assert refused.code == "scope.focal_point_inactive"
        post(client, f"/focal-points/{HCM}/reactivate", admin_headers)
        assert isinstance(_decision(exchange, HCM), Accept)
        # The agency's suspension covers its focal points, whatever their own status.
        post(client, "/agencies/VN-GDC/suspend", admin_headers)
        snap = db.call(snapshot.load, None)
        assert snap.focal_points[HCM] == snap.focal_points[HN] == "suspended"
        decision = _decision(exchange, HCM)
        assert isinstance(decision, Reject)
        assert decision.code == "scope.focal_point_inactive"
        post(client, "/agencies/VN-GDC/reactivate", admin_headers)
        assert isinstance(_decision(exchange, HCM), Accept)


class TestHeldDeliveries:
    def test_deliveries_to_a_suspended_agency_wait_and_arrive_in_order_exactly_once(
        self, exchange: Exchange, admin_headers: dict[str, str]
    ) -> None:
        client = exchange.client
        first, routing, _ = exchange.send()
        assert first.status_code == 201, first.text
        relay()
        mids = [routing["mid"]]
        assert drain(HK) == [(1, mids[0])]
        post(client, f"/agencies/{HK}/suspend", admin_headers)
        multi = mekong(exchange)
        sent = [exchange.submit(exchange.envelope(multi), multi)]
        for _ in range(2):
            response, routing, _ = exchange.send()
            sent.append(response)
            mids.append(routing["mid"])
        mids.insert(1, multi["mid"])
        assert [r.status_code for r in sent] == [201] * 3
        relay()
        book = ledger()
        # Held: queued, unnumbered, no msg.delivered; the other recipients got theirs.
        held = {(mid, st, seq) for mid, r, st, seq in book.deliveries if r == HK}
        assert held == {(mids[0], "fetched", 1)} | {(m, "queued", None) for m in mids[1:]}
        assert all(
            st == "available"
            for mid, r, st, _ in book.deliveries
            if mid == multi["mid"] and r != HK
        )
        assert all(book.delivered_events[(m, HK)] == 0 for m in mids[1:])
        assert book.pending_deliver_rows == 0  # the outbox rows are settled, nothing pending
        assert drain(HK) == [(1, mids[0])]
        refused = client.get("/v1/inbox", headers=exchange.agency_headers(HK))
        assert (refused.status_code, code(refused)) == (403, "auth.principal_suspended")
        back = post(client, f"/agencies/{HK}/reactivate", admin_headers, {"reason": "renewed"})
        assert back.status_code == 200, back.text
        assert events("agency.reactivated")[-1][1]["released"] == 3
        relay()
        response, routing, _ = exchange.send()
        assert response.status_code == 201
        mids.append(routing["mid"])
        relay()
        # In order of acceptance, numbered on from the inbox, each once, nothing left behind.
        assert drain(HK) == [(seq, mid) for seq, mid in enumerate(mids, start=1)]
        assert ledger().problems(mids) == []
        assert client.get("/v1/inbox", headers=exchange.agency_headers(HK)).status_code == 200

    def test_a_second_release_is_a_no_op(
        self, exchange: Exchange, admin_headers: dict[str, str]
    ) -> None:
        client = exchange.client
        post(client, f"/agencies/{HK}/suspend", admin_headers)
        _, routing, _ = exchange.send()
        relay()
        post(client, f"/agencies/{HK}/reactivate", admin_headers)
        # A duplicate outbox row for the same message (a second release, a late original row)
        # finds nothing queued: no second delivery, no second number.
        db.call(_release_again, HK)
        relay()
        assert drain(HK) == [(1, routing["mid"])]
        assert ledger().problems([routing["mid"]]) == []


async def _release_again(s: AsyncSession, agency: str) -> None:
    from broker.inbox import repository as inbox_repo
    from broker.messages.models import OUTBOX_DELIVER, Delivery

    ids = (await s.scalars(select(Delivery.message_id).where(Delivery.recipient == agency))).all()
    await inbox_repo.add_outbox(s, OUTBOX_DELIVER, ids, utcnow())


class TestPrincipal:
    def test_a_disabled_principal_is_refused_until_enabled(
        self, client: Any, world: dict[str, Any], admin_headers: dict[str, str]
    ) -> None:
        created = client.post(
            "/v1/admin/principals",
            json={"name": "hk-ced-inbox", "role": "agency", "agency_id": HK},
            headers=admin_headers,
        )
        token = bearer(created.json()["token"])
        done = post(client, "/principals/hk-ced-inbox/disable", admin_headers)
        assert (done.status_code, done.json()["status"]) == (200, "disabled")
        refused = client.get("/v1/me", headers=token)
        # The disabled principal keeps the code it always had.
        assert (refused.status_code, code(refused)) == (401, "auth.unauthenticated")
        again = post(client, "/principals/hk-ced-inbox/disable", admin_headers)
        assert (again.status_code, code(again)) == (409, "registry.status_unchanged")
        assert post(client, "/principals/hk-ced-inbox/enable", admin_headers).status_code == 200
        assert client.get("/v1/me", headers=token).status_code == 200
        assert post(client, "/principals/nobody/disable", admin_headers).status_code == 404
        assert events("principal.disabled") == [
            ("principal:hk-ced-inbox", {"role": "agency", "agency": HK, "note": REASON["reason"]})
        ]
        assert [s for s, _ in events("principal.enabled")] == ["principal:hk-ced-inbox"]


class TestDesignation:
    def test_ending_a_designation_takes_effect_after_its_last_day(
        self, exchange: Exchange, admin_headers: dict[str, str]
    ) -> None:
        client = exchange.client
        today = utcnow().date()
        path = f"/focal-points/{HCM}/designations/VN-HK-CMAA-2013/end"
        ended = post(client, path, admin_headers, {"valid_until": str(today), "reason": "moved"})
        assert ended.status_code == 200, ended.text
        assert ended.json()["valid_until"] == str(today)
        assert isinstance(_decision(exchange, HCM), Accept)  # today is still covered
        tomorrow = _decision(exchange, HCM, days=1)
        assert isinstance(tomorrow, Reject)
        assert tomorrow.code == "scope.focal_point_not_designated"
        again = post(client, path, admin_headers, {"valid_until": str(today), "reason": "moved"})
        assert (again.status_code, code(again)) == (409, "registry.status_unchanged")
        past = post(
            client,
            path,
            admin_headers,
            {"valid_until": str(today - timedelta(days=1)), "reason": "moved"},
        )
        assert (past.status_code, code(past)) == (422, "registry.bad_validity")
        unknown = f"/focal-points/{HCM}/designations/NO-SUCH/end"
        body = {"valid_until": str(today), "reason": "moved"}
        assert post(client, unknown, admin_headers, body).status_code == 404
        subject, details = events("designation.changed")[-1]
        assert subject == HCM
        assert details["valid_until"] == str(today)
        assert details["note"] == "moved"


class TestCli:
    def test_the_registrar_suspends_and_reactivates_from_the_command_line(
        self, world: dict[str, Any]
    ) -> None:
        from broker.cli.main import app

        runner = CliRunner()
        admin = ["admin"]
        out = runner.invoke(app, [*admin, "agency", "suspend", "VN-GDC", "--reason", "paused"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["status"] == "suspended"
        again = runner.invoke(app, [*admin, "agency", "suspend", "VN-GDC", "--reason", "paused"])
        assert again.exit_code == 1
        assert again.stderr.startswith("error: registry.status_unchanged: ")
        assert len(again.stderr.strip().splitlines()) == 1
        empty = runner.invoke(app, [*admin, "agency", "reactivate", "VN-GDC", "--reason", ""])
        assert empty.exit_code != 0
        assert empty.stderr.startswith("error: --reason is not valid")
        steps = [
            ["agency", "reactivate", "VN-GDC", "--reason", "resumed"],
            ["focal-point", "suspend", HCM, "--reason", "desk closed"],
            ["focal-point", "reactivate", HCM, "--reason", "desk open"],
            ["token", "create", "ops-1", "--role", "agency", "--agency", "VN-GDC"],
            ["token", "disable", "ops-1", "--reason", "left"],
            ["token", "enable", "ops-1", "--reason", "back"],
        ]
        for argv in steps:
            result = runner.invoke(app, [*admin, *argv])
            assert result.exit_code == 0, (argv, result.output)
        until = ["--until", str(utcnow().date()), "--reason", "moved"]
        end = runner.invoke(
            app, [*admin, "focal-point", "end-designation", HCM, "VN-HK-CMAA-2013", *until]
        )
        assert end.exit_code == 0, end.output
        assert [len(events(k)) for k in ("agency.suspended", "agency.reactivated")] == [1, 1]
        assert [s for s, _ in events("principal.enabled")] == ["principal:ops-1"]
