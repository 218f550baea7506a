"""The auditor's API: filtered event queries, summaries, and exports that verify offline."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import db
from broker.audit import verify
from broker.audit.models import AuditEvent
from tests.audit.conftest import execute, scalars, sequence_all
from tests.conftest import bearer
from tests.messages.conftest import Exchange, exchange, relay

__all__ = ["exchange"]  # the messaging harness's fixture, reused for the end-to-end check

ACCEPTED = [
    # sender, recipients, agreement, operation, offence
    ("VN-GDC", ["HK-CED"], "VN-HK-CMAA-2013", None, "cites_wildlife"),
    ("VN-GDC", ["HK-CED"], "VN-HK-CMAA-2013", None, "cites_wildlife"),
    ("HK-CED", ["VN-GDC"], "VN-HK-CMAA-2013", None, "narcotics"),
    ("VN-GDC", ["KR-KCS"], "VN-KR-CUSTOMS", "TWIN-GUARDIAN-II", "narcotics"),
    ("VN-MPS", ["NZ-POL"], "VN-NZ-TNC-2019", None, "human_trafficking"),
]
REJECTED = [
    ("NZ-POL", "VN-NZ-TNC-2019", "scope.direction_excluded"),
    ("VN-GDC", "VN-HK-CMAA-2013", "scope.offence_not_covered"),
    ("VN-GDC", "VN-HK-CMAA-2013", "scope.offence_not_covered"),
]


def _traffic() -> list[str]:
    """Events shaped like the messaging domain's: accepted, rejected, delivered, acked."""
    from broker.audit import service

    mids = []
    events = []
    for i, (sender, recipients, agreement, operation, offence) in enumerate(ACCEPTED):
        mid = f"00000000-0000-7000-8000-{i:012d}"
        mids.append(mid)
        accepted = {
            "mid": mid,
            "kind": "alert",
            "sender": sender,
            "recipients": recipients,
            "agreement": agreement,
            "operation": operation,
            "offence": offence,
        }
        actor = f"focal_point:{sender.lower()}"
        events.append(service.event("msg.accepted", actor=actor, subject=sender, details=accepted))
        for r in recipients:
            common = {"mid": mid, "sender": sender, "recipient": r}
            delivered = {**common, "delay_ms": 100 * (i + 1)}
            acked = {
                **common,
                "status": "rejected" if i == 2 else "decrypted",
                "agreement": agreement,
                "delay_ms": 1000 * (i + 1),
            }
            events += [
                service.event("msg.delivered", actor="broker:relay", subject=r, details=delivered),
                service.event("msg.acked", actor=f"agency:{r}", subject=r, details=acked),
            ]
    for sender, agreement, reason in REJECTED:
        details = {"sender": sender, "agreement": agreement, "reason": reason}
        events.append(
            service.event("msg.rejected", actor="focal_point:x", subject=sender, details=details)
        )
    db.call(service.record_many, events)
    return mids


def _events(api: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = api.get("/v1/audit/events", params={**params, "cursor": cursor}, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


class TestEvents:
    def test_filters(self, api: Any, world: dict[str, Any], oversight: dict[str, str]) -> None:
        _traffic()
        kinds = {"kind": ["msg.accepted", "msg.rejected"]}
        got = _events(api, oversight, **kinds)
        assert len(got) == len(ACCEPTED) + len(REJECTED)
        assert {e["kind"] for e in _events(api, oversight, kind="msg.rejected")} == {"msg.rejected"}
        hk = _events(api, oversight, agreement="VN-HK-CMAA-2013", kind="msg.accepted")
        assert len(hk) == 3
        assert len(_events(api, oversight, operation="TWIN-GUARDIAN-II")) == 1
        reasons = _events(api, oversight, reason="scope.offence_not_covered")
        assert len(reasons) == 2
        assert {e["kind"] for e in reasons} == {"msg.rejected"}
        nz = _events(api, oversight, agency="NZ-POL", **kinds)
        assert len(nz) == 2  # the accepted message to it and the refused one from it
        kr = _events(api, oversight, agency="KR-KCS", kind="msg.accepted")
        assert [e["details"]["recipients"] for e in kr] == [["KR-KCS"]]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert _events(api, oversight, since=future) == []
        assert len(_events(api, oversight, until=future, **kinds)) == len(got)

    def test_cursor_pages_see_every_event_once(
        self, api: Any, world: dict[str, Any], oversight: dict[str, str]
    ) -> None:
        everything = _events(api, oversight, limit=500)
        paged = _events(api, oversight, limit=7)
        assert [e["id"] for e in paged][: len(everything)] == [e["id"] for e in everything]
        assert len({e["id"] for e in paged}) == len(paged)

    def test_a_bound_auditor_sees_only_what_it_oversees(
        self, api: Any, world: dict[str, Any], token_for: Any
    ) -> None:
        _traffic()
        headers = bearer(token_for("auditor", audit_agencies=["NZ-POL"]))
        seen = _events(api, headers, kind=["msg.accepted", "msg.rejected", "msg.acked"])
        assert len(seen) == 3
        for e in seen:
            d = e["details"]
            assert "NZ-POL" in {d.get("sender"), d.get("recipient"), *d.get("recipients", [])}
        refused = api.get("/v1/audit/events", params={"agency": "VN-GDC"}, headers=headers)
        assert refused.status_code == 403
        assert refused.json()["code"] == "audit.not_overseen"

    @pytest.mark.parametrize(
        ("params", "code"),
        [
            ({"cursor": "not-a-uuid"}, "audit.bad_cursor"),
            ({"since": "2026-01-01T00:00:00"}, "request.invalid"),  # no offset: ambiguous
            (
                {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
                "audit.bad_filter",
            ),
            ({"limit": 501}, "request.invalid"),
            ({"agency": "X" * 40}, "request.invalid"),
        ],
    )
    def test_bad_queries(
        self, api: Any, oversight: dict[str, str], params: dict[str, Any], code: str
    ) -> None:
        response = api.get("/v1/audit/events", params=params, headers=oversight)
        assert response.status_code == 422
        assert response.json()["code"] == code

    def test_queries_are_audit_events(
        self, api: Any, world: dict[str, Any], oversight: dict[str, str]
    ) -> None:
        api.get(
            "/v1/audit/events", params={"agency": "HK-CED", "kind": "msg.acked"}, headers=oversight
        )
        (event,) = scalars(select(AuditEvent).where(AuditEvent.kind == "audit.queried"))
        assert event.details["query"] == "audit.events"
        assert event.details["filters"] == {"agency": "HK-CED", "kinds": ["msg.acked"]}
        # The filter's agency is nested: the auditor's interest is not a leaf naming HK-CED.
        assert "agency" not in event.details


class TestSummary:
    def test_volume_rejections_and_delays(
        self, api: Any, world: dict[str, Any], oversight: dict[str, str]
    ) -> None:
        _traffic()
        body = api.get(
            "/v1/audit/summary", params={"agreement": "VN-HK-CMAA-2013"}, headers=oversight
        ).json()
        assert body["agreement"] == "VN-HK-CMAA-2013"
        assert body["accepted"] == 3
        assert body["volume"] == [
            {"sender": "HK-CED", "recipient": "VN-GDC", "offence": "narcotics", "count": 1},
            {"sender": "VN-GDC", "recipient": "HK-CED", "offence": "cites_wildlife", "count": 2},
        ]
        assert body["rejected"] == 2
        assert body["rejections"] == [{"reason": "scope.offence_not_covered", "count": 2}]
        assert body["delivery_delay_ms"] == {
            "count": 3,
            "min": 100,
            "p50": 200,
            "p90": 300,
            "p99": 300,
            "max": 300,
        }
        acks = body["acknowledgements"]
        assert acks["count"] == 3
        assert acks["by_status"] == {"decrypted": 2, "rejected": 1}
        assert (acks["delay_ms"]["min"], acks["delay_ms"]["max"]) == (1000, 3000)

    def test_everything_overseen_when_no_agreement_is_named(
        self, api: Any, world: dict[str, Any], token_for: Any
    ) -> None:
        _traffic()
        everything = api.get("/v1/audit/summary", headers=bearer(token_for("auditor"))).json()
        assert everything["accepted"] == len(ACCEPTED)
        assert everything["rejected"] == len(REJECTED)
        nz = api.get(
            "/v1/audit/summary", headers=bearer(token_for("auditor", audit_agencies=["NZ-POL"]))
        ).json()
        assert nz["accepted"] == 1
        assert nz["rejected"] == 1
        assert nz["volume"] == [
            {"sender": "VN-MPS", "recipient": "NZ-POL", "offence": "human_trafficking", "count": 1}
        ]


class TestExport:
    @pytest.mark.parametrize("fmt", ["json", "csv"])
    def test_export_verifies_offline(
        self, api: Any, world: dict[str, Any], oversight: dict[str, str], log_key: str, fmt: str
    ) -> None:
        _traffic()
        sequence_all()
        late = _traffic()  # not yet sequenced: exported without proofs
        response = api.get(
            "/v1/audit/export", params={"format": fmt, "kind": "msg.accepted"}, headers=oversight
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(
            "text/csv" if fmt == "csv" else "application/json"
        )
        report = verify.verify_export(response.content, log_key)
        assert (report.events, report.proven) == (2 * len(ACCEPTED), len(ACCEPTED))
        assert "5 of 10 events proven" in str(report)
        with pytest.raises(verify.VerifyError, match="no inclusion proof"):
            verify.verify_export(response.content, log_key, require_all=True)
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(response.text)))
            assert rows[0]["record"] == "checkpoint"
            assert rows[0]["subject"] == log_key
            assert {r["details"] and json.loads(r["details"])["mid"] for r in rows[1:]} >= set(late)
        (event,) = scalars(select(AuditEvent).where(AuditEvent.kind == "audit.exported"))
        assert event.details["format"] == fmt
        assert event.details["filters"] == {"kinds": ["msg.accepted"]}

    def test_an_event_edited_after_sequencing_fails_verification(
        self, api: Any, world: dict[str, Any], oversight: dict[str, str], log_key: str
    ) -> None:
        _traffic()
        sequence_all()
        victim = scalars(select(AuditEvent).where(AuditEvent.kind == "msg.accepted"))[0]
        execute(
            update(AuditEvent)
            .where(AuditEvent.id == victim.id)
            .values(details={**victim.details, "offence": "tobacco"})
        )
        export = api.get("/v1/audit/export", params={"kind": "msg.accepted"}, headers=oversight)
        with pytest.raises(
            verify.VerifyError, match=f"event {victim.id}: its exported fields differ"
        ):
            verify.verify_export(export.content, log_key)

    def test_a_doctored_export_fails(
        self, api: Any, world: dict[str, Any], oversight: dict[str, str], log_key: str
    ) -> None:
        _traffic()
        sequence_all()
        doc = api.get("/v1/audit/export", headers=oversight).json()
        proven = [e for e in doc["events"] if e["proof"]]
        assert len(proven) > 50
        tampered = json.loads(json.dumps(doc))
        tampered["events"][3]["actor"] = "someone-else"
        with pytest.raises(verify.VerifyError, match="differ from leaf"):
            verify.verify_export(json.dumps(tampered).encode(), log_key)
        swapped = json.loads(json.dumps(doc))
        swapped["events"][1]["proof"], swapped["events"][2]["proof"] = (
            doc["events"][2]["proof"],
            doc["events"][1]["proof"],
        )
        with pytest.raises(verify.VerifyError, match="inclusion proof fails"):
            verify.verify_export(json.dumps(swapped).encode(), log_key)
        resigned = json.loads(json.dumps(doc))
        resigned["checkpoint"] = resigned["checkpoint"].replace("\n1", "\n2", 1)
        with pytest.raises(verify.VerifyError) as err:
            verify.verify_export(json.dumps(resigned).encode(), log_key)
        assert err.value.code == "bad_checkpoint"

    def test_a_bound_auditor_exports_only_what_it_oversees(
        self, api: Any, world: dict[str, Any], token_for: Any, log_key: str
    ) -> None:
        _traffic()
        sequence_all()
        headers = bearer(token_for("auditor", audit_agencies=["KR-KCS"]))
        doc = api.get("/v1/audit/export", params={"kind": "msg.accepted"}, headers=headers).json()
        assert [e["details"]["recipients"] for e in doc["events"]] == [["KR-KCS"]]
        assert verify.verify_export(json.dumps(doc).encode(), log_key).proven == 1


def test_a_real_exchange_is_summarised_and_exported(
    exchange: Exchange, token_for: Any, log_key: str
) -> None:
    """Through the messaging API: accepted, refused, delivered and acknowledged, then audited."""
    response, routing, envelope = exchange.send()
    assert response.status_code == 201, response.text
    refused, _, _ = exchange.send(offence="human_trafficking")
    assert refused.status_code >= 400
    relay()
    exchange.client.get("/v1/inbox", headers=exchange.agency_headers("HK-CED"))
    assert exchange.ack("HK-CED", routing["mid"], envelope).status_code == 200
    sequence_all()
    headers = bearer(token_for("auditor", audit_agencies=["HK-CED"]))
    summary = exchange.client.get(
        "/v1/audit/summary", params={"agreement": "VN-HK-CMAA-2013"}, headers=headers
    ).json()
    assert summary["accepted"] == 1
    assert summary["rejected"] == 1
    assert summary["volume"][0]["recipient"] == "HK-CED"
    assert summary["acknowledgements"]["by_status"] == {"decrypted": 1}
    assert summary["delivery_delay_ms"]["count"] == 1
    sequence_all()
    export = exchange.client.get("/v1/audit/export", params={"agency": "HK-CED"}, headers=headers)
    report = verify.verify_export(export.content, log_key)
    assert report.proven >= 4  # accepted, delivered, fetched, acked (and the registry's)
