"""The invariant checker itself: silent on a clean record, and it catches what it must.

Each test builds a small record through the real services (submit, relay, poll, ack, the log
sequencer), plants one fault by hand, and expects exactly that violation. Runs on both backends;
the planted duplicate inbox entry needs PostgreSQL's transactional DDL (the unique constraint
is dropped inside a transaction that is rolled back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from broker import db
from broker.audit import jobs as audit_jobs
from broker.audit.models import AuditEvent, LogLeaf
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from broker.inbox import jobs as inbox_jobs
from broker.inbox import service as inbox
from broker.invariants import service as checker
from broker.invariants.service import History
from broker.messages.models import Delivery, Message
from tests.inbox.conftest import HK, agency, mekong, submit
from tests.messages.conftest import Exchange

pytestmark = pytest.mark.hostile


def record(keys: Exchange, n: int = 3) -> list[str]:
    """n alerts (the first to three Mekong inboxes) relayed, HK's inbox polled, one ack."""
    mids = [submit(keys, mekong(keys) if i == 0 else keys.routing()) for i in range(n)]
    inbox_jobs.relay()
    page = db.call(inbox.poll, agency(HK), None, 100)
    item = page.items[0]
    payload = {
        "v": 1,
        "mid": str(item.mid),
        "envelope_sha256": sha256_b64u(item.envelope.encode()),
        "status": "decrypted",
        "at": 1,
    }
    ack = env.sign_compact(payload, keys.agency_signing[HK], env.TYP_ACK)
    db.call(inbox.acknowledge, agency(HK), item.mid, ack)
    audit_jobs.sequence_pending()
    return mids


def check(history: History | None = None) -> checker.Report:
    return db.call(checker.check, history)


def codes(report: checker.Report) -> dict[str, int]:
    return report.by_code()


def test_a_clean_record_has_no_violation(keys: Exchange) -> None:
    mids = record(keys)
    report = check(History(accepted={("VN-GDC", m) for m in mids}))
    assert report.violations == [], str(report)
    assert report.settled
    assert report.ok
    c = report.counts
    assert (c["messages"], c["deliveries"], c["accepted"], c["delivered"]) == (3, 5, 3, 5)
    assert (c["fetched"], c["acked"]) == (3, 1)
    assert c["leaves"] == c["events"]


def test_a_missing_inbox_entry_is_caught(keys: Exchange) -> None:
    submit(keys, keys.routing())
    db.call(lambda s: s.execute(delete(Delivery)))  # lost before the relay saw it
    inbox_jobs.relay()
    audit_jobs.sequence_pending()
    assert codes(check()) == {"inbox.missing": 1}


def test_a_missing_log_entry_is_caught(keys: Exchange) -> None:
    submit(keys, keys.routing())
    db.call(lambda s: s.execute(delete(AuditEvent).where(AuditEvent.kind == "msg.accepted")))
    inbox_jobs.relay()
    audit_jobs.sequence_pending()
    report = check()
    assert codes(report) == {"audit.accepted": 1}
    assert "0 msg.accepted" in report.violations[0].detail


def test_a_doubled_log_entry_is_caught(keys: Exchange) -> None:
    submit(keys, keys.routing())
    inbox_jobs.relay()

    async def doubled(s: AsyncSession) -> None:
        event = (await s.scalars(select(AuditEvent).filter_by(kind="msg.delivered"))).one()
        s.add(
            AuditEvent(
                kind=event.kind,
                actor=event.actor,
                subject=event.subject,
                details=dict(event.details),
            )
        )

    db.call(doubled)
    audit_jobs.sequence_pending()
    report = check()
    assert codes(report) == {"audit.delivered": 1}
    assert "2 msg.delivered" in report.violations[0].detail


@pytest.mark.postgres
def test_a_duplicate_inbox_entry_is_caught(keys: Exchange) -> None:
    submit(keys, keys.routing())
    inbox_jobs.relay()
    audit_jobs.sequence_pending()

    async def planted(s: AsyncSession) -> checker.Report:
        # DDL is transactional on PostgreSQL: the constraint is back after the rollback.
        await s.execute(
            text("alter table deliveries drop constraint uq_deliveries_message_recipient")
        )
        row = (await s.scalars(select(Delivery))).one()
        s.add(
            Delivery(
                message_id=row.message_id, recipient=row.recipient, state="available", inbox_seq=2
            )
        )
        await s.flush()
        report = await checker.check(s)
        await s.rollback()
        return report

    report = db.call(planted)
    assert codes(report) == {"inbox.duplicate": 1}, str(report)
    assert check().ok


def test_a_tampered_leaf_fails_the_log_and_its_verification(keys: Exchange) -> None:
    record(keys, 2)
    db.call(
        lambda s: s.execute(update(LogLeaf).where(LogLeaf.index == 1).values(leaf_bytes=b'{"v":1}'))
    )
    report = check()
    assert set(codes(report)) == {"log.leaf", "log.verify"}, str(report)
    assert "leaves" in next(v.detail for v in report.violations if v.code == "log.verify")


def test_history_catches_a_lost_accept_and_an_unlogged_refusal(keys: Exchange) -> None:
    mid = submit(keys, keys.routing())
    inbox_jobs.relay()
    audit_jobs.sequence_pending()

    async def lost(s: AsyncSession) -> None:
        await s.execute(delete(Delivery))
        await s.execute(delete(Message))

    db.call(lost)
    history = History(accepted={("VN-GDC", mid)})
    history.refused["x" * 43] += 1
    found = codes(check(history))
    assert found["message.lost"] == 1
    assert found["audit.rejected"] == 1
    assert found["audit.phantom"] >= 2  # its accepted and delivered events name nothing now


def test_refusals_counted_in_a_summary_leaf_satisfy_the_history(keys: Exchange) -> None:
    """Beyond the leaf budget a refusal is counted in `audit.summarised`, not logged alone."""
    from broker.audit import service as audit

    history = History()
    history.refused["y" * 43] += 3
    assert codes(check(history))["audit.rejected"] == 1  # nothing logged them

    async def summary(s: AsyncSession) -> None:
        row = {"kind": "msg.rejected", "code": "scope.no_agreement", "subject": None}
        await audit.record(
            s,
            "audit.summarised",
            actor="focal_point:fp",
            details={"summarised": 2, "recorded": 0, "counts": [{**row, "count": 2}]},
        )

    db.call(summary)
    assert codes(check(history))["audit.rejected"] == 1  # 2 counted, 3 refused
    db.call(summary)
    assert "audit.rejected" not in codes(check(history))


def test_waiting_fails_when_the_record_does_not_settle(keys: Exchange) -> None:
    submit(keys, keys.routing())  # no relay runs: the delivery stays queued
    report = db.run(checker.wait_settled, db.session_scope, timeout_s=1.0, every_s=0.2)
    assert not report.ok
    assert codes(report)["unsettled"] == 1
    assert report.pending["queued_deliveries"] == 1


def test_the_cli_exits_1_on_a_violation_and_0_when_clean(keys: Exchange, tmp_path: Path) -> None:
    from broker.cli.main import app

    mid = submit(keys, keys.routing())
    inbox_jobs.relay()
    audit_jobs.sequence_pending()
    runner = CliRunner()
    ok = runner.invoke(app, ["check", "--timeout", "5", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["counts"]["messages"] == 1
    history = tmp_path / "history.jsonl"
    lost: dict[str, Any] = {"sender": "VN-GDC", "mid": mid.upper(), "outcome": "ok"}
    other = {**lost, "mid": "01a209e8-cf03-74d1-ac62-45eda8e12c84"}
    history.write_text(json.dumps(lost) + "\n" + json.dumps(other) + "\n")
    bad = runner.invoke(app, ["check", "--timeout", "5", "--history", str(history)])
    assert bad.exit_code == 1
    assert "VIOLATION message.lost" in bad.output
    assert "1 invariant violations" in bad.output
