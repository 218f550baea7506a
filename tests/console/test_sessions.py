"""Console sessions are server-side: a random id in the cookie, its hash at rest, ended on the server."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.auth.models import Credential, Principal
from broker.console.models import ConsoleSession
from tests.conftest import bearer
from tests.console.conftest import form_token, same_origin, sign_in

COOKIE = "broker_console"


def _sessions() -> list[ConsoleSession]:
    return list(
        db.call(lambda s: s.scalars(select(ConsoleSession).order_by(ConsoleSession.created_at)))
    )


def _set(**values: Any) -> None:
    """Change every stored session behind the service's back (the clock of a test)."""
    db.call(lambda s: s.execute(update(ConsoleSession).values(**values)))


def _use(client: Any, session_id: str) -> None:
    """Make `session_id` the browser's only console cookie (a copied or replayed cookie)."""
    client.cookies.clear()
    client.cookies.set(COOKIE, session_id, path="/console")


def _refused_with(client: Any, notice: str) -> None:
    page = client.get("/console/", follow_redirects=False)
    assert page.status_code == 303, page.text
    assert page.headers["location"] == f"/console/login?notice={notice}"
    assert f'{COOKIE}=""' in page.headers["set-cookie"]


def _revoke(token: str) -> None:
    from broker.auth import repository, service

    async def revoke(s: AsyncSession) -> None:
        found = await repository.credential_by_hash(s, service.hash_token(token))
        assert found is not None
        await service.revoke_token(s, found[0].id, actor="test")

    db.call(revoke)


class TestTheCookie:
    def test_the_cookie_does_not_contain_the_token(self, client: Any, token_for: Any) -> None:
        token = token_for("auditor")
        response = sign_in(client, token)
        session_id = client.cookies[COOKIE]
        assert token not in response.headers["set-cookie"]
        assert session_id != token
        assert token not in session_id
        assert token.removeprefix("brk_") not in session_id
        assert not session_id.startswith("brk_")
        assert len(session_id) >= 43  # secrets.token_urlsafe(32)
        for flag in ("HttpOnly", "SameSite=strict", "Path=/console", "Max-Age=28800"):
            assert flag.lower() in response.headers["set-cookie"].lower()

    def test_the_cookie_is_refused_as_a_bearer_token(self, client: Any, auditor: str) -> None:
        session_id = client.cookies[COOKIE]
        assert client.get("/console/").status_code == 200
        response = client.get("/v1/audit/events", headers=bearer(session_id))
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "auth.unauthenticated"
        # The token itself still works on the API: only the cookie is refused.
        assert client.get("/v1/audit/events", headers=bearer(auditor)).status_code == 200

    def test_the_stored_session_id_is_a_hash(self, client: Any, auditor: str) -> None:
        from broker.auth.service import hash_token

        session_id = client.cookies[COOKIE]
        (row,) = _sessions()
        assert row.session_hash == hashlib.sha256(session_id.encode()).hexdigest()
        stored = " ".join(str(v) for v in vars(row).values())
        assert session_id not in stored
        assert auditor not in stored
        # Bound to the principal and to the token it was opened with.
        credential = db.call(
            lambda s: s.scalar(
                select(Credential).where(Credential.token_hash == hash_token(auditor))
            )
        )
        assert (row.credential_id, row.principal_id) == (
            credential.id,
            credential.principal_id,
        )
        assert row.revoked_at is None


class TestSignOut:
    def test_after_sign_out_the_old_cookie_opens_nothing(self, client: Any, auditor: str) -> None:
        session_id = client.cookies[COOKIE]
        out = client.post(
            "/console/logout",
            data={"csrf": form_token(client)},
            headers=same_origin(),
            follow_redirects=False,
        )
        assert out.status_code == 303
        assert f'{COOKIE}=""' in out.headers["set-cookie"]
        (row,) = _sessions()
        assert row.revoked_at is not None
        # A copy of the cookie, replayed after sign-out, opens nothing.
        _use(client, session_id)
        _refused_with(client, "console.session_ended")
        _use(client, session_id)
        partial = client.get("/console/log/full", headers={"HX-Request": "true"})
        assert partial.headers["hx-redirect"] == "/console/login?notice=console.session_ended"
        assert (
            "This session was signed out"
            in client.get("/console/login?notice=console.session_ended").text
        )

    def test_each_sign_in_gets_a_new_session_id(self, client: Any, token_for: Any) -> None:
        token = token_for("auditor")
        sign_in(client, token)
        first = client.cookies[COOKIE]
        sign_in(client, token)  # the browser still holds the first session's cookie
        second = client.cookies[COOKIE]
        assert second != first
        assert client.get("/console/").status_code == 200
        # Signing in again ended the session the browser held before.
        _use(client, first)
        _refused_with(client, "console.session_ended")

    def test_sign_in_and_sign_out_are_audit_events(self, client: Any, auditor: str) -> None:
        from broker.audit import repository

        session_id = client.cookies[COOKIE]
        out = client.post(
            "/console/logout", data={"csrf": form_token(client)}, headers=same_origin()
        )
        assert out.status_code == 200
        events = db.call(repository.list_events, kind="audit.queried", limit=1000)
        ours = [e for e in events if str(e.details.get("query", "")).startswith("console.sign")]
        assert [e.details["query"] for e in ours] == ["console.sign_in", "console.sign_out"]
        (row,) = _sessions()
        assert {e.details["session"] for e in ours} == {str(row.id)}
        assert all(e.actor.startswith("auditor:") for e in ours)
        # The log names the session by its row id, never by the secret id or its hash.
        assert all(session_id not in str(e.details) for e in ours)
        assert all(row.session_hash not in str(e.details) for e in ours)


class TestTimeLimits:
    def test_an_idle_session_is_refused(self, client: Any, auditor: str) -> None:
        assert client.get("/console/").status_code == 200
        _set(last_seen_at=datetime.now(UTC) - timedelta(minutes=30, seconds=1))
        _refused_with(client, "console.session_expired")
        assert (
            "Your session has expired"
            in client.get("/console/login?notice=console.session_expired").text
        )

    def test_use_slides_the_idle_limit_and_time_ends_it(self, client: Any, auditor: str) -> None:
        import time_machine

        now = datetime.now(UTC)
        with time_machine.travel(now + timedelta(minutes=20)):
            assert client.get("/console/").status_code == 200
        with time_machine.travel(now + timedelta(minutes=45)):
            assert client.get("/console/").status_code == 200  # 25 minutes after the last use
        with time_machine.travel(now + timedelta(minutes=76)):
            _refused_with(client, "console.session_expired")

    def test_polling_does_not_keep_a_session_alive(self, client: Any, auditor: str) -> None:
        import time_machine

        now = datetime.now(UTC)
        with time_machine.travel(now + timedelta(minutes=20)):
            assert client.get("/console/log/full").status_code == 200
        with time_machine.travel(now + timedelta(minutes=31)):
            _refused_with(client, "console.session_expired")

    def test_a_session_ends_at_its_absolute_limit_however_used(
        self, client: Any, auditor: str
    ) -> None:
        assert client.get("/console/").status_code == 200
        _set(created_at=datetime.now(UTC) - timedelta(hours=8, seconds=1))
        _refused_with(client, "console.session_expired")

    def test_the_limits_are_settings(
        self, client: Any, auditor: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from broker.config import settings

        _set(last_seen_at=datetime.now(UTC) - timedelta(minutes=10))
        assert client.get("/console/").status_code == 200
        monkeypatch.setattr(settings(), "console_session_idle_s", 300)
        _set(last_seen_at=datetime.now(UTC) - timedelta(minutes=6))
        _refused_with(client, "console.session_expired")


class TestBoundToTheToken:
    def test_revoking_the_token_ends_its_sessions(self, client: Any, token_for: Any) -> None:
        from broker.auth import service

        token = token_for("auditor")
        sign_in(client, token)
        first = client.cookies[COOKIE]
        client.cookies.clear()
        sign_in(client, token)  # a second browser
        second = client.cookies[COOKIE]
        assert first != second

        # Another token of the same principal, with a session of its own.
        async def another(s: AsyncSession) -> str:
            (principal_id,) = {r.principal_id for r in await s.scalars(select(ConsoleSession))}
            principal = await s.get(Principal, principal_id)
            assert principal is not None
            return (await service.issue_token(s, principal, actor="test"))[1]

        other = db.call(another)
        client.cookies.clear()
        sign_in(client, other)
        third = client.cookies[COOKIE]
        assert client.get("/console/").status_code == 200

        _revoke(token)
        for session_id in (first, second):
            _use(client, session_id)
            _refused_with(client, "auth.token_revoked")
        # A session is bound to the token it was opened with, not to every token of its holder.
        _use(client, third)
        assert client.get("/console/").status_code == 200

    def test_disabling_the_principal_ends_its_sessions(self, client: Any, auditor: str) -> None:
        assert client.get("/console/").status_code == 200
        db.call(lambda s: s.execute(update(Principal).values(status="disabled")))
        _refused_with(client, "auth.unauthenticated")

    def test_an_expired_token_ends_its_sessions(self, client: Any, auditor: str) -> None:
        assert client.get("/console/").status_code == 200
        db.call(
            lambda s: s.execute(
                update(Credential).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        )
        _refused_with(client, "auth.token_expired")


class TestFormToken:
    def test_forms_carry_the_session_token(self, client: Any, auditor: str) -> None:
        token = form_token(client)
        page = client.get("/console/agreements").text
        assert f'<input type="hidden" name="csrf" value="{token}">' in page
        assert client.cookies[COOKIE] not in page  # derived from the session id, not it

    @pytest.mark.parametrize("presented", [None, "", "forged", "other-session"])
    def test_a_form_without_this_sessions_token_is_refused(
        self, client: Any, token_for: Any, presented: str | None
    ) -> None:
        from broker.console import service

        sign_in(client, token_for("auditor"))
        data = {} if presented is None else {"csrf": presented}
        if presented == "other-session":
            data["csrf"] = service.form_token("another-session-id")
        for path in ("/console/log/verify", "/console/logout"):
            # Same origin, as far as the headers tell: the token is what is missing.
            response = client.post(path, data=data, headers=same_origin(), follow_redirects=False)
            assert response.status_code == 403, path
            assert "Form token missing or wrong" in response.text
            assert "set-cookie" not in response.headers
        assert client.get("/console/").status_code == 200  # still signed in
