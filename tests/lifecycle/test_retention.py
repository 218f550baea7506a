"""Retention: messages past their agreement's retention are purged, held ones kept, the log intact.

The clock is the test's: `service.purge(now=...)`, and messages are made old by moving their
acceptance time back in the database (what six years of waiting would do). Everything else is
the real path: signed, encrypted envelopes submitted, relayed, fetched and acknowledged.
"""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from broker import db
from broker.audit import log
from broker.audit.models import AuditEvent, LogLeaf
from broker.config import settings
from broker.crypto import merkle
from broker.errors import NotFound
from broker.inbox import service as inbox
from broker.lifecycle import jobs, service
from broker.lifecycle.schemas import HoldIn
from broker.messages import service as messages
from broker.messages.models import Delivery, Message
from tests.audit.conftest import sequence_all
from tests.conftest import bearer
from tests.inbox.conftest import HK, agency, focal_point, submit
from tests.inbox.test_acks import signed_ack
from tests.messages.conftest import Exchange, relay

NOW = datetime.now(UTC)
SIX_YEARS_AGO = NOW - timedelta(days=6 * 366)  # VN-HK-CMAA-2013 keeps messages five years


def age(mid: str, accepted: datetime) -> None:
    """Move the message's acceptance time back, as if it had been accepted then."""
    db.call(
        lambda s: s.execute(
            update(Message).where(Message.mid == uuid.UUID(mid)).values(received_at=accepted)
        )
    )


def message_row(mid: str) -> Message:
    return db.call(lambda s: s.scalar(select(Message).where(Message.mid == uuid.UUID(mid))))


def acks_of(mid: str) -> list[str | None]:
    return list(
        db.call(
            lambda s: s.scalars(
                select(Delivery.ack)
                .join(Message, Message.id == Delivery.message_id)
                .where(Message.mid == uuid.UUID(mid))
            )
        )
    )


def purged_events() -> list[dict[str, Any]]:
    return list(
        db.call(
            lambda s: s.scalars(
                select(AuditEvent.details)
                .where(AuditEvent.kind == "msg.purged")
                .order_by(AuditEvent.created_at)
            )
        )
    )


def hold(mid: str, who: Any = None) -> Any:
    from broker.auth.service import Caller, Role

    admin = who or Caller(principal_id=uuid.uuid4(), name="test-admin", role=Role.admin)
    data = HoldIn(sender="VN-GDC", mid=uuid.UUID(mid), reason="MLA request", reference="MLA-1")
    return db.call(service.place_hold, admin, data)


def sent_and_acknowledged(ex: Exchange) -> tuple[str, str]:
    """A VN-GDC -> HK-CED alert, fetched and acknowledged by HK-CED: (mid, envelope)."""
    routing = ex.routing()
    envelope = ex.envelope(routing)
    outcome = db.call(messages.submit, focal_point(routing["sender_fp"]), envelope, routing["mid"])
    assert outcome.status == 201
    relay()
    mids = [str(i.mid) for i in db.call(inbox.poll, agency(HK), None, 100).items]
    assert routing["mid"] in mids
    ack = signed_ack(ex, HK, routing["mid"], envelope, "decrypted")
    db.call(inbox.acknowledge, agency(HK), uuid.UUID(routing["mid"]), ack)
    return routing["mid"], envelope


def dump() -> str:
    """Every row of every table as text, as an operator's backup would hold them."""
    url = make_url(settings().sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(str(url.database)) as conn:
            return "\n".join(conn.iterdump())
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(
        ["pg_dump", "--data-only", plain], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def raw_database() -> bytes:
    """The SQLite files' bytes, free pages and write-ahead log included (b"" on PostgreSQL)."""
    url = make_url(settings().sqlalchemy_url)
    if url.get_backend_name() != "sqlite":
        return b""
    found = b""
    for suffix in ("", "-wal"):
        path = Path(f"{url.database}{suffix}")
        found += path.read_bytes() if path.exists() else b""
    return found


def test_past_retention_purged_newer_and_held_kept_log_intact(
    exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, old_envelope = sent_and_acknowledged(exchange)
    held, _ = sent_and_acknowledged(exchange)
    newer = submit(exchange, exchange.routing())
    relay()
    for mid in (old, held):
        age(mid, SIX_YEARS_AGO)
    hold(held)
    sequence_all()
    before = db.call(log.latest)
    event_id = message_row(old).event_id
    accepted_leaf = db.call(
        lambda s: s.scalar(select(AuditEvent.leaf_index).where(AuditEvent.id == event_id))
    )
    proof = db.call(log.inclusion, accepted_leaf, before.size)

    ciphertext = old_envelope.split(".")[1][-200:-100]  # of the JWE, inside the outer JWS
    assert ciphertext in dump()
    # As in a deployment that has run a while: the envelope is in the database file itself,
    # not only in SQLite's write-ahead log, so the purge frees pages that held it.
    db.run(db.sqlite_truncate_wal)
    assert raw_database() == b"" or ciphertext.encode() in raw_database()

    monkeypatch.setattr(service, "utcnow", lambda: NOW)
    assert jobs.purge() == 1  # the job: batches, then SQLite's write-ahead log emptied

    gone = message_row(old)
    assert gone.purged_at is not None
    assert gone.envelope == ""
    assert acks_of(old) == [None]
    for kept in (held, newer):
        row = message_row(kept)
        assert (row.purged_at, len(row.envelope) > 1000) == (None, True)
    assert acks_of(held) != [None]
    [event] = purged_events()
    assert event["agreement"] == "VN-HK-CMAA-2013"
    assert event["retention"] == "P5Y"
    assert event["messages"] == [{"sender": "VN-GDC", "mid": old}]
    assert event["recipients"] == ["HK-CED", "VN-GDC"]

    # Nothing of its ciphertext is left in any table, nor in the SQLite file's free pages.
    assert ciphertext not in dump()
    assert ciphertext.encode() not in raw_database()
    assert old_envelope[-64:] not in dump()

    # The sender learns it is gone; the recipient's inbox no longer serves it.
    with pytest.raises(messages.Purged):
        db.call(messages.status, focal_point("VN-GDC/fp-hcm-01"), uuid.UUID(old))
    assert old not in [str(i.mid) for i in db.call(inbox.poll, agency(HK), None, 100).items]
    with pytest.raises(NotFound):
        db.call(
            inbox.acknowledge,
            agency(HK),
            uuid.UUID(old),
            signed_ack(exchange, HK, old, old_envelope, "decrypted"),
        )

    # Every leaf is kept: the earlier proof verifies, the new checkpoint is consistent with the
    # earlier one, and the whole stored log recomputes.
    sequence_all()
    after = db.call(log.latest)
    assert after.size > before.size
    stored = db.call(
        lambda s: s.scalar(select(LogLeaf.leaf_bytes).where(LogLeaf.index == accepted_leaf))
    )
    merkle.verify_inclusion(
        merkle.leaf_hash(stored),
        accepted_leaf,
        before.size,
        [base64.b64decode(h) for h in proof.proof],
        before.root_hash,
    )
    consistency = db.call(log.consistency, before.size, after.size)
    merkle.verify_consistency(
        before.size,
        after.size,
        [base64.b64decode(h) for h in consistency.proof],
        before.root_hash,
        after.root_hash,
    )
    report = db.call(log.verify_stored, full=True, previous=before.note)
    assert report.size == after.size


def test_a_lifted_hold_lets_the_next_purge_take_it(exchange: Exchange) -> None:
    mid, _ = sent_and_acknowledged(exchange)
    age(mid, SIX_YEARS_AGO)
    placed = hold(mid)
    assert db.call(service.purge, now=NOW) == 0
    from broker.auth.service import Caller, Role

    admin = Caller(principal_id=uuid.uuid4(), name="test-admin", role=Role.admin)
    lifted = db.call(service.lift_hold, admin, placed.id, "proceedings closed")
    assert (lifted.active, lifted.lift_reason) == (False, "proceedings closed")
    with pytest.raises(service.HoldLifted):
        db.call(service.lift_hold, admin, placed.id, "again")
    assert db.call(service.purge, now=NOW) == 1
    assert message_row(mid).purged_at is not None
    with pytest.raises(messages.Purged):
        hold(mid)


def test_purges_go_in_batches_each_whole(
    exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    mids = [submit(exchange, exchange.routing()) for _ in range(5)]
    relay()
    for mid in mids:
        age(mid, SIX_YEARS_AGO)
    assert db.call(service.purge, now=NOW, batch=2) == 2
    assert [len(e["messages"]) for e in purged_events()] == [2]
    monkeypatch.setattr(service, "PURGE_BATCH", 2)
    monkeypatch.setattr(service, "utcnow", lambda: NOW)
    assert jobs.purge() == 3
    assert [len(e["messages"]) for e in purged_events()] == [2, 2, 1]  # a leaf per batch
    assert sorted(m["mid"] for e in purged_events() for m in e["messages"]) == sorted(mids)
    assert all(message_row(m).envelope == "" for m in mids)


def test_a_run_resumes_where_its_last_batch_ended(exchange: Exchange) -> None:
    """A run's batches start after the last message the run took (the index scan no longer
    walks what the run already purged); what it passed over, held then, a later run takes."""
    mids = [submit(exchange, exchange.routing()) for _ in range(4)]
    relay()
    for i, mid in enumerate(mids):
        age(mid, SIX_YEARS_AGO + timedelta(minutes=i))  # purged oldest first
    resume: service.Resume = {}
    held = hold(mids[0])
    assert db.call(service.purge, now=NOW, batch=1, resume=resume) == 1  # passes mids[0] over
    assert message_row(mids[1]).purged_at is not None
    assert resume["VN-HK-CMAA-2013"][1] == message_row(mids[1]).id
    from broker.auth.service import Caller, Role

    admin = Caller(principal_id=uuid.uuid4(), name="test-admin", role=Role.admin)
    db.call(service.lift_hold, admin, held.id, "released")
    # Lifted, but behind this run's position: the run goes on with mids[2], then mids[3].
    assert db.call(service.purge, now=NOW, batch=1, resume=resume) == 1
    assert message_row(mids[0]).purged_at is None
    assert message_row(mids[2]).purged_at is not None
    assert db.call(service.purge, now=NOW, batch=5, resume=resume) == 1  # mids[3]
    assert db.call(service.purge, now=NOW, batch=5, resume=resume) == 0
    # The next run starts from the beginning.
    assert db.call(service.purge, now=NOW, batch=5, resume={}) == 1
    assert all(message_row(m).purged_at is not None for m in mids)


@pytest.mark.parametrize(
    ("now", "retention", "start"),
    [
        ("2031-06-15T12:00:00", "P5Y", "2026-06-15T12:00:00"),
        ("2028-02-29T00:00:00", "P1Y", "2027-02-28T00:00:00"),
        ("2031-03-31T00:00:00", "P1M", "2031-02-28T00:00:00"),
        ("2031-01-31T00:00:00", "P1Y6M", "2029-07-31T00:00:00"),
        ("2031-01-10T00:00:00", "P2W3DT4H", "2030-12-23T20:00:00"),
    ],
)
def test_retention_is_counted_by_the_calendar(now: str, retention: str, start: str) -> None:
    at = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert service.retention_start(at, retention) == datetime.fromisoformat(start).replace(
        tzinfo=UTC
    )


@pytest.mark.parametrize(
    "retention", [None, "", "P", "PT", "5Y", "P5X", "P-1Y", "P3000Y", "P99999999999D"]
)
def test_no_readable_retention_purges_nothing(retention: str | None) -> None:
    assert service.retention_start(NOW, retention) is None


def test_holds_over_http(exchange: Exchange) -> None:
    client = exchange.client
    mid = submit(exchange, exchange.routing())
    auditor = bearer(exchange.token_for("auditor", audit_agencies=["HK-CED"]))
    foreign = bearer(exchange.token_for("auditor", audit_agencies=["KR-KCS"]))
    body = {"sender": "VN-GDC", "mid": mid, "reason": "MLA request", "reference": "MLA-2026-114"}
    placed = client.post("/v1/holds", json=body, headers=auditor)
    assert placed.status_code == 201, placed.text
    assert placed.json()["active"] is True
    refused = client.post("/v1/holds", json=body, headers=foreign)
    assert (refused.status_code, refused.json()["code"]) == (403, "audit.not_overseen")
    fp = client.post("/v1/holds", json=body, headers=exchange.fp_headers("VN-GDC/fp-hcm-01"))
    assert (fp.status_code, fp.json()["code"]) == (403, "auth.forbidden")
    unknown = client.post("/v1/holds", json={**body, "mid": str(uuid.uuid4())}, headers=auditor)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "request.not_found")
    listed = client.get("/v1/holds", headers=auditor).json()["items"]
    assert [h["mid"] for h in listed] == [mid]
    assert client.get("/v1/holds", headers=foreign).json()["items"] == []
    hold_id = placed.json()["id"]
    lift = client.post(f"/v1/holds/{hold_id}/lift", json={"reason": "closed"}, headers=auditor)
    assert lift.status_code == 200, lift.text
    again = client.post(f"/v1/holds/{hold_id}/lift", json={"reason": "closed"}, headers=auditor)
    assert (again.status_code, again.json()["code"]) == (409, "hold.lifted")
    assert client.get("/v1/holds", headers=auditor).json()["items"] == []
    kinds = db.call(
        lambda s: s.scalars(
            select(AuditEvent.kind).where(AuditEvent.kind.in_(["hold.placed", "hold.lifted"]))
        )
    )
    assert sorted(kinds) == ["hold.lifted", "hold.placed"]


def test_status_of_a_purged_message_is_410(exchange: Exchange) -> None:
    mid = submit(exchange, exchange.routing())
    relay()
    age(mid, SIX_YEARS_AGO)
    assert db.call(service.purge, now=NOW) == 1
    answer = exchange.client.get(
        f"/v1/messages/{mid}", headers=exchange.fp_headers("VN-GDC/fp-hcm-01")
    )
    assert (answer.status_code, answer.json()["code"]) == (410, "message.purged")
