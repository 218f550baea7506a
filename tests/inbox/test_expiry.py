"""Expiry: a copy not fetched before its message's `exp` leaves the inbox and is never served.

The clock is the test's: `clock.at(t)` makes the inbox service's `utcnow` return `t` (polls,
the relay, the expiry job), so nothing waits for real time to pass. Messages are real signed,
encrypted envelopes submitted through the service layer, with `exp` a minute after `iat`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from broker import db
from broker.audit.models import AuditEvent
from broker.errors import NotFound
from broker.inbox import jobs, service
from broker.messages import service as messages
from broker.messages.models import Delivery, Message
from tests.inbox.conftest import HK, agency, focal_point, submit
from tests.inbox.test_acks import signed_ack
from tests.messages.conftest import Exchange, relay

TTL_S = 60


class Clock:
    """The inbox service's time, set by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now: datetime | None = None
        monkeypatch.setattr(service, "utcnow", self._utcnow)

    def _utcnow(self) -> datetime:
        return self.now or datetime.now(UTC)

    def at(self, moment: datetime) -> None:
        self.now = moment


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def short_lived(keys: Exchange, **overrides: Any) -> tuple[str, datetime, str]:
    """Submit a VN-GDC -> HK-CED alert that expires TTL_S after now: (mid, exp, envelope)."""
    routing = keys.routing(**overrides)
    routing["exp"] = routing["iat"] + TTL_S
    envelope = keys.envelope(routing)
    outcome = db.call(messages.submit, focal_point(routing["sender_fp"]), envelope, routing["mid"])
    assert outcome.status == 201, outcome.refusal
    return routing["mid"], datetime.fromtimestamp(routing["exp"], UTC), envelope


def served(agency_id: str = HK) -> list[str]:
    """Every mid the agency's inbox serves now, following its cursor to the end."""
    mids: list[str] = []
    cursor: str | None = None
    while True:
        page = db.call(service.poll, agency(agency_id), cursor, 100)
        mids += [str(item.mid) for item in page.items]
        if not page.more:
            return mids
        cursor = page.next_cursor


def state_of(mid: str, recipient: str = HK) -> tuple[str, datetime | None]:
    async def read(s: Any) -> tuple[str, datetime | None]:
        row = (
            await s.execute(
                select(Delivery.state, Delivery.expired_at)
                .join(Message, Message.id == Delivery.message_id)
                .where(Message.mid == uuid.UUID(mid), Delivery.recipient == recipient)
            )
        ).one()
        return row.state, row.expired_at

    return db.call(read)


def expired_events() -> list[dict[str, Any]]:
    details = db.call(
        lambda s: s.scalars(select(AuditEvent.details).where(AuditEvent.kind == "msg.expired"))
    )
    return list(details)


def expire_at(moment: datetime) -> int:
    return db.call(service.expire, now=moment)


def test_an_unfetched_copy_is_not_served_after_exp_and_is_withdrawn(
    keys: Exchange, clock: Clock
) -> None:
    mid, exp, envelope = short_lived(keys)
    relay()
    clock.at(exp - timedelta(seconds=1))
    assert mid in _peek()  # still in the inbox a second before
    clock.at(exp)
    assert mid not in served()  # from exp on, never served
    assert state_of(mid)[0] == "available"  # until the job withdraws it
    assert expire_at(exp) == 0  # the grace: a page read just before exp may still commit
    withdrawn = exp + service.EXPIRY_GRACE
    assert expire_at(withdrawn) == 1
    assert state_of(mid) == ("expired", withdrawn)
    [event] = expired_events()
    assert event == {
        "mid": mid,
        "sender": "VN-GDC",
        "recipient": HK,
        "exp": int(exp.timestamp()),
    }
    assert expire_at(withdrawn + timedelta(hours=1)) == 0  # once
    # The sender sees it; the recipient cannot acknowledge what it never received.
    status = db.call(messages.status, focal_point("VN-GDC/fp-hcm-01"), uuid.UUID(mid))
    [delivery] = status.deliveries
    assert (delivery.state, delivery.expired_at, delivery.overdue) == ("expired", withdrawn, False)
    ack = signed_ack(keys, HK, mid, envelope, "decrypted")
    with pytest.raises(NotFound):
        db.call(service.acknowledge, agency(HK), uuid.UUID(mid), ack)


def _peek() -> list[str]:
    """What a poll would serve, without marking anything fetched (rolled back)."""

    async def read(s: Any) -> list[str]:
        page = await service.poll(s, agency(HK), None, 100)
        await s.rollback()
        return [str(item.mid) for item in page.items]

    return db.call(read)


def test_a_copy_fetched_before_exp_stays_with_its_recipient(keys: Exchange, clock: Clock) -> None:
    mid, exp, envelope = short_lived(keys)
    relay()
    clock.at(exp - timedelta(seconds=1))
    assert served() == [mid]
    clock.at(exp + timedelta(days=1))
    assert expire_at(exp + timedelta(days=1)) == 0
    assert state_of(mid)[0] == "fetched"
    assert served() == [mid]  # a fetched copy is the recipient's: it may read the page again
    ack = signed_ack(keys, HK, mid, envelope, "decrypted")
    assert db.call(service.acknowledge, agency(HK), uuid.UUID(mid), ack).status == "decrypted"
    assert expired_events() == []


def test_the_cursor_passes_over_an_expired_copy_to_the_next(keys: Exchange, clock: Clock) -> None:
    first, exp, _ = short_lived(keys)
    later = keys.routing()  # a week to live
    second = submit(keys, later)
    relay()
    clock.at(exp)
    page = db.call(service.poll, agency(HK), None, 1)
    assert [str(i.mid) for i in page.items] == [second]
    assert not page.more
    assert served() == [second]
    assert first not in served()


def test_a_message_expired_before_the_relay_is_never_made_available(
    keys: Exchange, clock: Clock
) -> None:
    mid, exp, _ = short_lived(keys)
    clock.at(exp)  # the relay reaches it only at exp (a backlog, a worker down)
    relay()
    state, expired_at = state_of(mid)
    assert (state, expired_at) == ("expired", exp)
    seq = db.call(
        lambda s: s.scalar(
            select(Delivery.inbox_seq)
            .join(Message, Message.id == Delivery.message_id)
            .where(Message.mid == uuid.UUID(mid))
        )
    )
    assert seq is None  # no inbox number: nothing for a cursor to skip
    assert [e["mid"] for e in expired_events()] == [mid]
    delivered = db.call(
        lambda s: s.scalars(select(AuditEvent.details).where(AuditEvent.kind == "msg.delivered"))
    )
    assert [d for d in delivered if d["mid"] == mid] == []
    assert served() == []


def test_the_job_takes_batches_until_none_is_left(
    keys: Exchange, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mids = [short_lived(keys)[0] for _ in range(5)]
    relay()
    monkeypatch.setattr(service, "EXPIRY_BATCH", 2)
    batches: list[int] = []
    one_batch = service.expire

    async def counted(session: Any, **kw: Any) -> int:
        batches.append(await one_batch(session, **kw))
        return batches[-1]

    monkeypatch.setattr(service, "expire", counted)
    clock.at(datetime.now(UTC) + timedelta(seconds=TTL_S) + service.EXPIRY_GRACE)
    assert jobs.expire() == 5
    assert batches == [2, 2, 1]  # each its own transaction
    assert sorted(e["mid"] for e in expired_events()) == sorted(mids)
    assert {state_of(mid)[0] for mid in mids} == {"expired"}


def test_invariants_hold_after_expiry(keys: Exchange, clock: Clock) -> None:
    from broker.invariants import service as invariants

    fetched, exp, _ = short_lived(keys)
    relay()
    clock.at(exp - timedelta(seconds=1))
    assert served() == [fetched]
    withdrawn, _, _ = short_lived(keys)
    relay()
    late, exp3, _ = short_lived(keys)
    clock.at(exp3 + service.EXPIRY_GRACE)
    relay()
    assert expire_at(exp3 + service.EXPIRY_GRACE) == 1  # `late` was expired by the relay
    report = db.call(invariants.check)
    assert report.violations == [], report.violations
    assert {state_of(m)[0] for m in (withdrawn, late)} == {"expired"}
