"""Inbox fixtures: real signed, encrypted envelopes submitted through the service layer.

`keys` registers the same keys as `tests/messages/conftest.py::exchange` but starts no app, so
no embedded ticker relays behind a test's back: each test decides who relays (threads it runs,
or a real Celery worker).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.auth.service import Caller, Role
from tests.messages.conftest import Exchange, register_world_keys
from tests.messages.conftest import exchange as exchange  # the HTTP harness, for tests here too

HK = "HK-CED"
MEKONG = ["CN-GACC", "HK-CED", "KR-KCS"]


def mekong(ex: Exchange) -> dict[str, Any]:
    """A multilateral Mekong Dragon alert from VN-GDC to three members."""
    return ex.routing(
        recipients=MEKONG,
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["conveyance", "person"],
    )


def focal_point(fp: str) -> Caller:
    return Caller(
        principal_id=uuid.uuid4(),
        name=f"test-{fp}",
        role=Role.focal_point,
        agency_id=fp.split("/")[0],
        focal_point_id=fp,
    )


def agency(agency_id: str) -> Caller:
    return Caller(
        principal_id=uuid.uuid4(), name=f"test-{agency_id}", role=Role.agency, agency_id=agency_id
    )


def submit(ex: Exchange, routing: dict[str, Any], *, retry_s: float = 0.0) -> str:
    """Submit one envelope through the service layer (its own transaction); returns the mid.

    With `retry_s`, a submit that fails because the database is away is sent again, the same
    envelope with the same mid, as a client would: idempotency makes it count once (a submit
    whose commit did happen answers 200 with the original receipt).
    """
    from sqlalchemy.exc import DBAPIError

    from broker.messages import service

    envelope = ex.envelope(routing)
    deadline = time.monotonic() + retry_s
    while True:
        try:
            outcome = db.call(
                service.submit, focal_point(routing["sender_fp"]), envelope, routing["mid"]
            )
            break
        except (DBAPIError, OSError):  # a restart in progress
            if time.monotonic() > deadline:
                raise
            RETRIED.append(routing["mid"])
            time.sleep(0.2)
    assert outcome.status in (200, 201), outcome.refusal
    return str(routing["mid"])


RETRIED: list[str] = []  # mids whose submit had to be sent again (database away)


@pytest.fixture
def keys(world: dict[str, Any], token_for: Any) -> Exchange:
    """Keys for every focal point and agency of the demo world, registered; no client."""
    from broker import keyring

    keyring.load_or_create()  # before any worker process could race to create them
    return register_world_keys(Exchange(client=None, token_for=token_for), world)


@dataclass
class Ledger:
    """What the database says about every message: the section 4.6 invariants, checked."""

    messages: dict[str, list[str]]  # mid -> routed recipients
    deliveries: list[tuple[str, str, str, int | None]]  # mid, recipient, state, seq
    accepted_events: Counter[str]
    delivered_events: Counter[tuple[str, str]]
    pending_deliver_rows: int

    def problems(self, accepted: list[str] | None = None) -> list[str]:
        """Every violation of exactly-once delivery (empty when all hold)."""
        found: list[str] = []
        if accepted is not None:
            lost = sorted(set(accepted) - set(self.messages))
            found += [f"accepted but not stored: {mid}" for mid in lost]
        per_pair = Counter((mid, r) for mid, r, _, _ in self.deliveries)
        for mid, recipients in self.messages.items():
            for r in recipients:
                if per_pair[(mid, r)] != 1:
                    found.append(f"{mid} -> {r}: {per_pair[(mid, r)]} deliveries")
                if self.delivered_events[(mid, r)] != 1:
                    found.append(f"{mid} -> {r}: {self.delivered_events[(mid, r)]} msg.delivered")
            if self.accepted_events[mid] != 1:
                found.append(f"{mid}: {self.accepted_events[mid]} msg.accepted events")
        unexpected = [p for p in per_pair if p[1] not in self.messages.get(p[0], [])]
        found += [f"unexpected delivery {p}" for p in unexpected]
        queued = [(mid, r) for mid, r, state, _ in self.deliveries if state == "queued"]
        found += [f"still queued: {p}" for p in queued]
        seqs: dict[str, list[int]] = defaultdict(list)
        for _, r, _, seq in self.deliveries:
            if seq is not None:
                seqs[r].append(seq)
        for r, numbers in seqs.items():
            if sorted(numbers) != list(range(1, len(numbers) + 1)):
                found.append(f"{r}: inbox numbers not 1..{len(numbers)}: {sorted(numbers)}")
        if self.pending_deliver_rows:
            found.append(f"{self.pending_deliver_rows} deliver outbox rows still pending")
        return found

    @property
    def settled(self) -> bool:
        return self.pending_deliver_rows == 0 and all(
            state != "queued" for _, _, state, _ in self.deliveries
        )


def ledger() -> Ledger:
    """Read messages, deliveries, audit events and the outbox."""
    return db.call(_ledger)


async def _ledger(s: AsyncSession) -> Ledger:
    from broker.audit.models import AuditEvent
    from broker.messages.models import Delivery, Message, Outbox

    messages = {
        str(mid): list(routing["recipients"])
        for mid, routing in await s.execute(select(Message.mid, Message.routing))
    }
    deliveries = [
        (str(mid), r, state, seq)
        for mid, r, state, seq in await s.execute(
            select(Message.mid, Delivery.recipient, Delivery.state, Delivery.inbox_seq).join(
                Message, Message.id == Delivery.message_id
            )
        )
    ]
    accepted: Counter[str] = Counter()
    delivered: Counter[tuple[str, str]] = Counter()
    for kind, details in await s.execute(
        select(AuditEvent.kind, AuditEvent.details).where(
            AuditEvent.kind.in_(["msg.accepted", "msg.delivered"])
        )
    ):
        if kind == "msg.accepted":
            accepted[details["mid"]] += 1
        else:
            delivered[(details["mid"], details["recipient"])] += 1
    pending = len(
        (
            await s.scalars(
                select(Outbox.id).where(
                    Outbox.topic == "deliver", Outbox.done_at.is_(None), Outbox.dead_at.is_(None)
                )
            )
        ).all()
    )
    return Ledger(messages, deliveries, accepted, delivered, pending)


def drain(agency_id: str) -> list[tuple[int, str]]:
    """Follow the agency's cursor to the end, as a partner would; (seq, mid) in inbox order
    (urgent copies served ahead of the cursor come again, in order, and count then)."""
    from broker.inbox import service

    seen: list[tuple[int, str]] = []
    cursor: str | None = None
    while True:
        page = db.call(service.poll, agency(agency_id), cursor, 100)
        if not page.items:
            return seen
        seen += sorted((item.seq, str(item.mid)) for item in page.items if not item.ahead)
        cursor = page.next_cursor
