"""The outbox relay: per-row attempts, failures isolated, dead letters, nothing lost or doubled."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import OperationalError

from broker import db, faults
from broker.ids import utcnow
from broker.inbox import repository, service
from broker.messages.models import Message, Outbox
from tests.inbox.conftest import HK, drain, ledger, submit
from tests.messages.conftest import Exchange


def relay() -> int:
    return db.run(service.relay_all, db.session_scope)


def rows() -> list[Outbox]:
    return list(db.call(repository.outbox_rows, "deliver"))


def make_due() -> None:
    """Let time pass for the backoff and the leases."""
    db.call(
        lambda s: s.execute(update(Outbox).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    )


def message_id(mid: str) -> uuid.UUID:
    found = db.call(lambda s: s.scalar(select(Message.id).where(Message.mid == uuid.UUID(mid))))
    assert found is not None
    return found


def test_a_relay_that_fails_mid_batch_leaves_its_rows_and_they_are_retried(
    keys: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    mids = [submit(keys, keys.routing()) for _ in range(3)]
    calls: list[str] = []

    def fail_once(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("the relay died after taking inbox numbers")

    monkeypatch.setattr(service, "crash_point", fail_once)
    assert relay() == 3
    # The failed batch committed nothing; its rows got an attempt each and went through again.
    assert [(r.attempts, r.done_at is not None) for r in rows()] == [(1, True)] * 3
    assert ledger().problems(mids) == []
    assert [mid for _, mid in drain(HK)] == mids


def test_a_poison_row_is_isolated_counted_and_dead_lettered(
    keys: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    mids = [submit(keys, keys.routing()) for _ in range(4)]
    poison = message_id(mids[1])
    real = repository.queued_deliveries

    async def queued(session: Any, message_ids: list[uuid.UUID]) -> Any:
        if poison in message_ids:
            raise ValueError("this row breaks the relay")
        return await real(session, message_ids)

    monkeypatch.setattr(repository, "queued_deliveries", queued)
    relay()
    # The others went through at once; the poison row waits for its backoff.
    book = ledger()
    assert sorted(mid for mid, _, st, _ in book.deliveries if st == "available") == sorted(
        mids[:1] + mids[2:]
    )
    (bad,) = [r for r in rows() if r.done_at is None]
    assert bad.ref == poison
    assert bad.attempts == 1
    assert bad.next_attempt_at is not None
    assert bad.next_attempt_at > utcnow()
    assert bad.last_error is not None
    assert "ValueError: this row breaks the relay" in bad.last_error
    for _ in range(service.MAX_RELAY_ATTEMPTS + 2):
        make_due()
        relay()
    (bad,) = [r for r in rows() if r.done_at is None]
    assert bad.dead_at is not None  # given up: kept for an operator, out of every claim
    assert bad.attempts == service.MAX_RELAY_ATTEMPTS
    assert relay() == 0
    # Fixed and re-armed by an operator, it is delivered once, numbered after the others.
    monkeypatch.setattr(repository, "queued_deliveries", real)
    db.call(
        lambda s: s.execute(
            update(Outbox).where(Outbox.id == bad.id).values(dead_at=None, attempts=0)
        )
    )
    relay()
    assert ledger().problems(mids) == []
    assert [mid for _, mid in drain(HK)] == mids[:1] + mids[2:] + mids[1:2]


def test_rows_left_by_a_dead_relay_are_counted_before_they_are_tried(keys: Exchange) -> None:
    mids = [submit(keys, keys.routing()) for _ in range(2)]
    # As if a relay had died holding them a minute ago.
    db.call(lambda s: s.execute(update(Outbox).values(created_at=utcnow() - timedelta(minutes=1))))
    relay()
    assert [(r.attempts, r.done_at is not None) for r in rows()] == [(1, True)] * 2
    assert ledger().problems(mids) == []


def test_a_lost_database_connection_is_not_counted_against_the_rows(
    keys: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    mids = [submit(keys, keys.routing())]

    def outage(name: str) -> None:
        raise OperationalError("update", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(service, "crash_point", outage)
    with pytest.raises(OperationalError):
        relay()
    assert [(r.attempts, r.done_at) for r in rows()] == [(0, None)]
    monkeypatch.undo()
    relay()
    assert ledger().problems(mids) == []


def test_relaying_the_same_message_twice_changes_nothing(keys: Exchange) -> None:
    mids = [submit(keys, keys.routing()) for _ in range(2)]
    relay()
    # A duplicate row (a re-armed dead letter, an old sweep).
    duplicate = {"topic": "deliver", "ref": message_id(mids[0]), "created_at": utcnow()}
    db.call(lambda s: s.execute(insert(Outbox), [duplicate]))
    assert relay() == 1
    mids.append(submit(keys, keys.routing()))
    relay()
    assert ledger().problems(mids) == []
    assert [seq for seq, _ in drain(HK)] == [1, 2, 3]


def test_crash_points_are_armed_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    faults.reset()
    monkeypatch.setenv(faults.ENV, "a.b, relay.after_seq")
    try:
        assert faults.armed() == {"a.b", "relay.after_seq"}
        faults.crash_point("not.armed")  # returns: only named points exit
    finally:
        monkeypatch.delenv(faults.ENV)
        faults.reset()
    assert faults.armed() == frozenset()


def test_crash_points_stay_disarmed_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import config

    production = config.settings().model_copy(update={"environment": config.Environment.production})
    monkeypatch.setattr(config, "settings", lambda: production)
    monkeypatch.setenv(faults.ENV, "relay.after_seq")
    faults.reset()
    try:
        assert faults.armed() == frozenset()
    finally:
        faults.reset()
