"""The console's export: the API's signed export file, behind the console's session and form
token (issue 16.6)."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.audit import verify
from broker.audit.models import AuditEvent
from tests.conftest import bearer
from tests.console.conftest import Traffic, form_token, same_origin, sign_in


def _log_key() -> str:
    from broker import keyring

    return keyring.load_or_create().log_verifier_key


def _exports() -> list[AuditEvent]:
    async def exported(s: AsyncSession) -> list[AuditEvent]:
        stmt = select(AuditEvent).where(AuditEvent.kind == "audit.exported")
        return list((await s.scalars(stmt)).all())

    return db.call(exported)


def _export(client: Any, **fields: str) -> Any:
    return client.post(
        "/console/export",
        data={"csrf": form_token(client), **fields},
        headers=same_origin(),
        follow_redirects=False,
    )


def _export_form(page: str) -> str:
    found = re.search(r'<form method="post" action="/console/export".*?</form>', page, re.S)
    assert found is not None, "no export form on the page"
    return found.group(0)


def _hidden(form: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))


class TestTheButton:
    def test_the_log_offers_an_export_of_its_filters(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        page = client.get("/console/?agreement=VN-KR-CUSTOMS&kind=msg.accepted")
        assert page.status_code == 200
        form = _export_form(page.text)
        hidden = _hidden(form)
        assert hidden.pop("csrf") == form_token(client)
        assert hidden == {"agreement": "VN-KR-CUSTOMS", "kind": "msg.accepted"}
        assert '<select id="x-format" name="format">' in form
        assert re.search(r"<button[^>]*>Export</button>", form)

    def test_the_rejections_page_exports_rejections(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        page = client.get("/console/rejections")
        assert _hidden(_export_form(page.text))["kind"] == "msg.rejected"
        export = _export(client, kind="msg.rejected")
        report = verify.verify_export(export.content, _log_key())
        assert report.events == 1
        assert export.json()["events"][0]["details"]["reason"] == "scope.offence_not_covered"


class TestTheFile:
    @pytest.mark.parametrize("fmt", ["json", "csv"])
    def test_it_is_the_apis_signed_export(
        self, client: Any, traffic: Traffic, auditor: str, fmt: str
    ) -> None:
        response = _export(client, format=fmt, kind="msg.accepted")
        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == (
            f'attachment; filename="audit-export.{fmt}"'
        )
        assert response.headers["content-type"].startswith(
            "text/csv" if fmt == "csv" else "application/json"
        )
        assert response.headers["cache-control"] == "no-store"
        report = verify.verify_export(response.content, _log_key(), require_all=True)
        assert (report.events, report.proven) == (3, 3)
        # The same events as the API's export for the same filter, with their leaves; the
        # proofs may be against a later checkpoint (the exports themselves are logged).
        api = client.get(
            "/v1/audit/export",
            params={"format": fmt, "kind": "msg.accepted"},
            headers=bearer(auditor),
        )
        assert api.status_code == 200
        assert verify.verify_export(api.content, _log_key(), require_all=True).events == 3
        if fmt == "json":
            ours, theirs = response.json(), api.json()
            assert [{**e, "proof": None} for e in ours["events"]] == [
                {**e, "proof": None} for e in theirs["events"]
            ]
            assert ours["log_key"] == theirs["log_key"]
            mids = {e["details"]["mid"] for e in ours["events"]}
        else:
            # After the header and checkpoint records; the last column is the proof.
            ours_rows = list(csv.reader(io.StringIO(response.text)))[2:]
            theirs_rows = list(csv.reader(io.StringIO(api.text)))[2:]
            assert [r[:-1] for r in ours_rows] == [r[:-1] for r in theirs_rows]
            mids = {json.loads(r[6])["mid"] for r in ours_rows}
        assert mids == {traffic.hk, traffic.kr, traffic.nz}
        # Recorded like the API's: by the signed-in auditor, with its filters.
        console_export, api_export = _exports()
        assert console_export.actor == api_export.actor
        assert console_export.actor.startswith("auditor:")
        assert console_export.details["format"] == fmt
        assert console_export.details["filters"] == {"kinds": ["msg.accepted"]}

    def test_a_bound_auditor_exports_only_what_it_oversees(
        self, client: Any, traffic: Traffic, token_for: Any
    ) -> None:
        sign_in(client, token_for("auditor", audit_agencies=["KR-KCS"]))
        doc = _export(client, kind="msg.accepted").json()
        assert [e["details"]["mid"] for e in doc["events"]] == [traffic.kr]
        assert verify.verify_export(json.dumps(doc).encode(), _log_key()).proven == 1


class TestRefusals:
    def test_without_the_form_token_nothing_is_exported(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        for token in ("", "forged"):
            refused = client.post(
                "/console/export",
                data={"csrf": token, "kind": "msg.accepted"},
                headers=same_origin(),
            )
            assert refused.status_code == 403
            assert refused.headers["content-type"].startswith("text/html")
            assert "content-disposition" not in refused.headers
        assert _exports() == []

    def test_another_site_cannot_export(self, client: Any, traffic: Traffic, auditor: str) -> None:
        refused = client.post(
            "/console/export",
            data={"csrf": form_token(client)},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert refused.status_code == 403
        assert _exports() == []

    def test_signed_out_it_sends_to_the_sign_in_page(self, client: Any, traffic: Traffic) -> None:
        response = client.post(
            "/console/export", data={"csrf": "x"}, headers=same_origin(), follow_redirects=False
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/console/login?notice=required"
        assert _exports() == []

    @pytest.mark.parametrize(
        ("fields", "says"),
        [
            ({"kind": "msg.bogus"}, "unknown event kind"),
            ({"since": "yesterday"}, "must be a date"),
            ({"format": "xml"}, "format"),
        ],
    )
    def test_bad_values_are_a_page_not_half_a_file(
        self, client: Any, traffic: Traffic, auditor: str, fields: dict[str, str], says: str
    ) -> None:
        response = _export(client, **fields)
        assert response.status_code in (400, 422), response.text
        assert response.headers["content-type"].startswith("text/html")
        assert says in response.text
        assert _exports() == []
