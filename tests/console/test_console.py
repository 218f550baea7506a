"""The auditor console over HTTP: sign-in, sessions, CSRF, scoping, pages after real exchanges."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit.models import AuditEvent
from tests.conftest import bearer
from tests.console.conftest import (
    CSP,
    MARKER,
    Traffic,
    finish_runs,
    form_token,
    same_origin,
    sign_in,
    text_of,
)

PAGES = [
    "/console/",
    "/console/rejections",
    "/console/agreements",
    "/console/operations",
    "/console/operations/MEKONG-DRAGON-V",
    "/console/log",
]


def _revoke(token: str) -> None:
    from broker.auth import repository, service

    async def revoke(s: AsyncSession) -> None:
        found = await repository.credential_by_hash(s, service.hash_token(token))
        assert found is not None
        await service.revoke_token(s, found[0].id, actor="test")

    db.call(revoke)


class TestSignIn:
    def test_the_form_is_served_with_strict_headers(self, client: Any) -> None:
        page = client.get("/console/login")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["content-security-policy"].startswith(CSP)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert 'name="token"' in page.text
        # No inline script or style anywhere: only the vendored htmx, by URL.
        assert "<script>" not in page.text
        assert "style=" not in page.text
        assert '<script src="/static/console/htmx.min.js"' in page.text

    def test_an_auditor_signs_in_and_out(self, client: Any, token_for: Any) -> None:
        token = token_for("auditor")
        response = sign_in(client, token)
        assert response.headers["location"] == "/console/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("broker_console=")
        assert token not in cookie  # a session id, not the token (tests/console/test_sessions.py)
        for flag in ("HttpOnly", "SameSite=strict", "Path=/console", "Max-Age=28800"):
            assert flag.lower() in cookie.lower()
        assert "secure" not in cookie.lower()  # the public base URL is http here
        page = client.get("/console/")
        assert page.status_code == 200
        assert "Exchange log" in page.text
        assert "Sign out" in page.text
        assert "oversees every agency" in page.text
        out = client.post(
            "/console/logout",
            data={"csrf": form_token(client)},
            headers=same_origin(),
            follow_redirects=False,
        )
        assert out.status_code == 303
        assert out.headers["location"] == "/console/login?notice=signed_out"
        assert 'broker_console=""' in out.headers["set-cookie"]
        again = client.get("/console/", follow_redirects=False)
        assert again.status_code == 303
        assert again.headers["location"] == "/console/login?notice=required"

    def test_the_cookie_is_secure_behind_https(
        self, client: Any, token_for: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from broker.config import settings

        monkeypatch.setattr(settings(), "public_base_url", "https://broker.example.int")
        response = client.post(
            "/console/login",
            data={"token": token_for("auditor")},
            headers={"Origin": "https://broker.example.int"},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert "secure" in response.headers["set-cookie"].lower()

    @pytest.mark.parametrize(
        ("role", "binding"),
        [
            ("focal_point", {"focal_point_id": "VN-GDC/fp-hcm-01"}),
            ("agency", {"agency_id": "HK-CED"}),
            ("admin", {}),
        ],
    )
    def test_other_roles_are_refused(
        self, client: Any, world: Any, token_for: Any, role: str, binding: dict[str, str]
    ) -> None:
        response = client.post(
            "/console/login", data={"token": token_for(role, **binding)}, headers=same_origin()
        )
        assert response.status_code == 403
        assert "only auditor tokens open the console" in response.text
        assert "set-cookie" not in response.headers
        assert client.get("/console/", follow_redirects=False).status_code == 303

    def test_unknown_revoked_and_expired_tokens_are_refused(
        self, client: Any, token_for: Any
    ) -> None:
        cases = {"brk_nope": "This is not a valid token."}
        revoked = token_for("auditor")
        _revoke(revoked)
        cases[revoked] = "This token was revoked."
        expired = token_for("auditor", ttl_days=1)
        import time_machine

        with time_machine.travel(datetime.now(UTC) + timedelta(days=2)):
            response = client.post("/console/login", data={"token": expired}, headers=same_origin())
        assert response.status_code == 401
        assert "This token has expired." in response.text
        for token, message in cases.items():
            response = client.post("/console/login", data={"token": token}, headers=same_origin())
            assert response.status_code == 401
            assert message in response.text
            assert "set-cookie" not in response.headers

    def test_revocation_ends_an_open_session_at_once(self, client: Any, auditor: str) -> None:
        assert client.get("/console/").status_code == 200
        session_id = client.cookies["broker_console"]
        _revoke(auditor)
        page = client.get("/console/", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login?notice=auth.token_revoked"
        assert 'broker_console=""' in page.headers["set-cookie"]
        login = client.get(page.headers["location"])
        assert "Your token was revoked" in login.text
        # htmx requests are told where to go instead of being redirected.
        client.cookies.set("broker_console", session_id, path="/console")
        partial = client.get("/console/?kind=&cursor=x", headers={"HX-Request": "true"})
        assert partial.headers["hx-redirect"] == "/console/login?notice=auth.token_revoked"

    def test_a_cookie_holding_a_token_is_no_session(
        self, client: Any, world: Any, token_for: Any
    ) -> None:
        for token in (token_for("agency", agency_id="HK-CED"), token_for("auditor")):
            client.cookies.set("broker_console", token)
            page = client.get("/console/log", follow_redirects=False)
            assert page.status_code == 303
            assert page.headers["location"] == "/console/login?notice=auth.unauthenticated"

    def test_signed_in_visitors_skip_the_form(self, client: Any, auditor: str) -> None:
        page = client.get("/console/login", follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (303, "/console/")


class TestCrossSite:
    @pytest.mark.parametrize(
        "headers",
        [
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},
        ],
    )
    def test_unsafe_methods_from_another_site_are_refused(
        self, client: Any, auditor: str, headers: dict[str, str]
    ) -> None:
        csrf = form_token(client)
        for path, data in [
            ("/console/logout", {"csrf": csrf}),
            ("/console/login", {"token": auditor}),
            ("/console/log/verify", {"full": "true", "csrf": csrf}),
        ]:
            response = client.post(path, data=data, headers=headers, follow_redirects=False)
            assert response.status_code == 403, path
            assert "Cross-site request refused" in response.text
            assert "set-cookie" not in response.headers
        assert client.get("/console/").status_code == 200  # still signed in

    def test_same_origin_and_header_less_clients_pass(self, client: Any, auditor: str) -> None:
        ok = client.post(
            "/console/logout", data={"csrf": form_token(client)}, follow_redirects=False
        )
        assert ok.status_code == 303


class TestScope:
    def test_a_bound_auditor_sees_only_its_agencies(
        self, client: Any, traffic: Traffic, token_for: Any
    ) -> None:
        sign_in(client, token_for("auditor", audit_agencies=["NZ-POL"]))
        page = client.get("/console/?kind=")
        assert page.status_code == 200
        assert traffic.nz in page.text
        for other in (traffic.hk, traffic.kr, traffic.refused):
            assert other not in page.text
        assert "oversees NZ-POL" in page.text
        # The filter offers only its agencies and agreements.
        assert '<option value="NZ-POL"' in page.text
        assert '<option value="HK-CED"' not in page.text
        assert '<option value="VN-NZ-TNC-2019"' in page.text
        assert '<option value="VN-HK-CMAA-2013"' not in page.text
        # Another agency's message answers 404, like an unknown one.
        for mid in (traffic.hk, traffic.refused, "0190e353-3700-7a1c-9d2e-5b8f4a1c2d3e"):
            other = client.get(f"/console/messages/{mid}")
            assert other.status_code == 404
            assert "No such message" in other.text
        assert client.get(f"/console/messages/{traffic.nz}").status_code == 200
        assert client.get("/console/agreements/VN-HK-CMAA-2013").status_code == 404
        assert client.get("/console/agreements/VN-NZ-TNC-2019").status_code == 200
        refused = client.get("/console/?agency=HK-CED")
        assert refused.status_code == 403
        assert "you do not oversee HK-CED" in refused.text
        rejections = client.get("/console/rejections")
        assert traffic.refused_sha256 not in rejections.text
        agreements = client.get("/console/agreements")
        assert "VN-NZ-TNC-2019" in agreements.text
        assert "VN-HK-CMAA-2013" not in agreements.text

    def test_console_queries_are_audit_events(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        client.get("/console/?kind=")
        client.get(f"/console/messages/{traffic.hk}")
        client.get("/console/agreements/VN-HK-CMAA-2013")

        async def queried(s: AsyncSession) -> list[AuditEvent]:
            stmt = select(AuditEvent).where(AuditEvent.kind == "audit.queried")
            return list((await s.scalars(stmt)).all())

        queries = [e.details["query"] for e in db.call(queried) if e.actor.startswith("auditor:")]
        for query in ("audit.events", "console.message", "console.volume", "audit.summary"):
            assert query in queries


class TestPages:
    def test_every_page_renders_after_real_exchanges(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        pages = {path: client.get(path) for path in PAGES}
        pages["message"] = client.get(f"/console/messages/{traffic.hk}")
        pages["chart"] = client.get("/console/agreements/VN-HK-CMAA-2013")
        for name, page in pages.items():
            assert page.status_code == 200, name
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["content-security-policy"].startswith(CSP)
            assert MARKER not in page.text, name
            assert "Ivory" not in page.text, name
            assert auditor not in page.text, name  # the token is never echoed
            assert "style=" not in page.text
            assert "<script>" not in page.text

    def test_the_exchange_log_lists_and_filters(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        log = client.get("/console/")
        text = text_of(log.text)
        for mid in (traffic.hk, traffic.kr, traffic.nz, traffic.refused):
            assert f'href="/console/messages/{mid}"' in log.text
        assert "VN-GDC/fp-hcm-01 → HK-CED" in text
        assert "scope.offence_not_covered" in text
        assert "label_mismatch" in text
        kr = client.get("/console/?agreement=VN-KR-CUSTOMS&kind=msg.accepted")
        assert traffic.kr in kr.text
        assert traffic.hk not in kr.text
        rejected = client.get("/console/?kind=msg.rejected&reason=scope.offence_not_covered")
        assert traffic.refused in rejected.text
        assert traffic.nz not in rejected.text
        today = datetime.now(UTC).date()
        past = client.get(f"/console/?until={(today - timedelta(days=1)).isoformat()}")
        assert "No events match these filters." in past.text
        now = client.get(f"/console/?since={today.isoformat()}&until={today.isoformat()}")
        assert traffic.nz in now.text
        by_agency = client.get("/console/?agency=NZ-POL")
        assert traffic.nz in by_agency.text
        assert traffic.hk not in by_agency.text

    def test_what_the_visitor_typed_is_escaped(self, client: Any, auditor: str) -> None:
        page = client.get("/console/", params={"reason": '"><script>alert(1)</script>'})
        assert page.status_code == 200
        assert "<script>alert(1)" not in page.text
        assert "&lt;script&gt;alert(1)" in page.text

    def test_load_more_follows_the_cursor(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        first = client.get("/console/?kind=msg.accepted&limit=2")
        assert first.text.count('class="mid"') == 2
        assert "Load more" in first.text
        more = first.text.split('hx-get="')[1].split('"')[0].replace("&amp;", "&")
        assert "cursor=" in more
        assert "kind=msg.accepted" in more
        assert "limit=2" in more
        partial = client.get(more, headers={"HX-Request": "true"})
        assert partial.status_code == 200
        assert "<html" not in partial.text
        assert "<tr" in partial.text
        assert partial.text.count('class="mid"') == 1
        assert "End of the log" in partial.text
        # Without htmx the same address is a whole page.
        assert "<html" in client.get(more).text

    def test_a_message_timeline(self, client: Any, traffic: Traffic, auditor: str) -> None:
        page = client.get(f"/console/messages/{traffic.hk}")
        text = text_of(page.text)
        assert traffic.hk in text
        for fact in ("accepted", "delivered", "fetched", "acknowledged", "decrypted", "HK-CED"):
            assert fact in text
        assert "VN-HK-CMAA-2013" in text
        assert "cites_wildlife" in text
        kr = text_of(client.get(f"/console/messages/{traffic.kr}").text)
        assert "rejected" in kr
        assert "label_mismatch" in kr
        nz = text_of(client.get(f"/console/messages/{traffic.nz}").text)
        assert "not yet" in nz  # delivered but neither fetched nor acknowledged
        refused = client.get(f"/console/messages/{traffic.refused}")
        assert refused.status_code == 200
        text = text_of(refused.text)
        assert "never accepted" in text
        assert "scope.offence_not_covered" in text
        assert traffic.refused_sha256 in text

    def test_rejections_with_reasons(self, client: Any, traffic: Traffic, auditor: str) -> None:
        page = client.get("/console/rejections")
        text = text_of(page.text)
        assert "scope.offence_not_covered" in text
        assert traffic.refused in page.text
        assert traffic.refused_sha256[:22] in text
        none = client.get("/console/rejections?reason=scope.direction_excluded")
        assert "No rejected attempts match these filters." in none.text

    def test_agreement_charts(self, client: Any, traffic: Traffic, auditor: str) -> None:
        page = client.get("/console/agreements/VN-HK-CMAA-2013?days=7")
        assert page.status_code == 200
        assert page.text.count("<svg") == 2
        assert '<rect class="acc"' in page.text
        assert '<rect class="rej"' in page.text
        today = datetime.now(UTC).date().isoformat()
        assert f"{today}: 1 accepted" in page.text
        assert f"{today}: 1 rejected" in page.text
        assert "VN-GDC → HK-CED: 1 accepted" in page.text
        assert "scope.offence_not_covered" in page.text
        listing = client.get("/console/agreements")
        assert 'href="/console/agreements/VN-KR-CUSTOMS"' in listing.text
        assert client.get("/console/agreements/VN-HK-CMAA-2013?days=3").status_code == 422

    def test_the_log_verifies_quickly_then_in_full(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        page = client.get("/console/log")
        text = text_of(page.text)
        assert "Latest checkpoint" in text
        assert "Tree size" in text
        assert "No full verification has run yet." in text
        size = int(page.text.split('name="since" value="')[1].split('"')[0])
        assert size > 0
        csrf = form_token(client)
        result = client.post(
            "/console/log/verify",
            data={"full": "true", "index": "3", "since": str(size), "csrf": csrf},
            headers={**same_origin(), "HX-Request": "true"},
        )
        assert result.status_code == 200
        text = text_of(result.text)
        assert "OK — the log verifies" in text
        assert "signature OK" in text
        assert "leaf 3 is included" in text
        assert f"consistent with the stored checkpoint size {size}" in text
        # The full verification runs in the background; the answer swaps its card in.
        assert '<div id="full-run" hx-swap-oob="true" hx-get="/console/log/full"' in result.text
        assert "Queued — full verification of tree size" in text
        finish_runs()
        done = text_of(client.get("/console/log/full").text)
        assert re.search(r"OK — the log verifies in full at tree size \d+", done), done
        assert "leaves reproduce the root" in done
        whole = client.post("/console/log/verify", data={"csrf": csrf}, headers=same_origin())
        assert "<html" in whole.text
        assert "OK — the log verifies" in whole.text
        assert "OK — the log verifies in full" in whole.text

    @pytest.mark.parametrize("index", ["\u00b2", "\u0663", "-1", "1e3"])
    def test_a_leaf_index_that_is_not_ascii_digits_is_refused(
        self, client: Any, traffic: Traffic, auditor: str, index: str
    ) -> None:
        # str.isdigit() accepts a superscript two and Arabic-Indic digits; int() does not.
        result = client.post(
            "/console/log/verify",
            data={"index": index, "csrf": form_token(client)},
            headers={**same_origin(), "HX-Request": "true"},
        )
        assert result.status_code == 422, result.text
        assert "the leaf index is a whole number" in result.text

    def test_verification_reports_the_exact_failure(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        from sqlalchemy import update

        from broker.audit.models import LogLeaf

        db.call(
            lambda s: s.execute(update(LogLeaf).where(LogLeaf.index == 1).values(leaf_bytes=b"{}"))
        )
        client.post(
            "/console/log/verify",
            data={"full": "true", "csrf": form_token(client)},
            headers={**same_origin(), "HX-Request": "true"},
        )
        finish_runs()
        body = text_of(client.get("/console/log").text)
        assert "FAILED — leaves" in body
        assert "leaf 1: stored hash differs from its bytes" in body

    def test_a_bound_auditor_cannot_run_a_full_verification(
        self, client: Any, traffic: Traffic, token_for: Any
    ) -> None:
        sign_in(client, token_for("auditor", audit_agencies=["HK-CED"]))
        page = client.get("/console/log")
        assert "needs an auditor who oversees every agency" in page.text
        assert 'id="full-run"' not in page.text
        csrf = form_token(client)
        result = client.post("/console/log/verify", data={"csrf": csrf}, headers=same_origin())
        assert "OK — the log verifies" in result.text
        full = client.post(
            "/console/log/verify", data={"full": "true", "csrf": csrf}, headers=same_origin()
        )
        assert full.status_code == 403
        assert "needs an auditor who oversees every agency" in full.text


class TestErrors:
    @pytest.mark.parametrize(
        ("path", "status", "text"),
        [
            ("/console/nowhere", 404, "Page not found"),
            ("/console/messages/not-a-uuid", 404, "No such message"),
            ("/console/?since=yesterday", 422, "must be a date"),
            ("/console/?kind=bogus", 422, "unknown event kind"),
            ("/console/?since=2026-02-02&until=2026-01-01", 422, "before the"),
            ("/console/?kind=&cursor=not-a-cursor", 422, "next_cursor"),
            ("/console/?limit=100000", 422, "Some values are not valid"),
            ("/console/agreements/NOPE", 404, "No such agreement"),
        ],
    )
    def test_errors_are_friendly_pages(
        self, client: Any, auditor: str, path: str, status: int, text: str
    ) -> None:
        page = client.get(path)
        assert page.status_code == status
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"].startswith(CSP)
        assert text in page.text
        assert "Traceback" not in page.text
        assert "problem+json" not in page.text

    def test_routing_errors_are_pages_too(self, client: Any, auditor: str) -> None:
        assert (
            client.get("/console", follow_redirects=False).headers["location"].endswith("/console/")
        )
        for method, status in (("PUT", 405), ("DELETE", 405)):
            page = client.request(method, "/console/log", headers=same_origin())
            assert page.status_code == status
            assert "Not allowed" in page.text
            assert page.headers["content-security-policy"].startswith(CSP)
        missing = client.post("/console/nowhere", headers=same_origin())
        assert missing.status_code == 404
        assert "Page not found" in missing.text

    def test_an_unexpected_error_shows_no_stack_trace(
        self, client: Any, auditor: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from broker.console import service

        async def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(service, "log_state", boom)
        page = client.get("/console/log")
        assert page.status_code == 500
        assert "Something went wrong" in page.text
        assert "secret internals" not in page.text
        assert "Traceback" not in page.text
        assert "Request id" in page.text

    def test_htmx_errors_go_to_the_message_area(self, client: Any, auditor: str) -> None:
        page = client.get("/console/?kind=&cursor=bad", headers={"HX-Request": "true"})
        assert page.status_code == 422
        assert page.headers["hx-retarget"] == "#flash"
        assert '<div class="alert"' in page.text
        assert "<html" not in page.text

    def test_the_api_still_answers_problem_json(self, client: Any, token_for: Any) -> None:
        response = client.get("/v1/audit/events", headers=bearer(token_for("auditor")))
        assert response.status_code == 200
        assert client.get("/v1/nowhere").headers["content-type"] == "application/problem+json"
