"""Model-based test of submit, relay, poll and acknowledge (research 7.3 B2): a Hypothesis state machine.

Rules, through the HTTP API with real signed and encrypted envelopes (the `exchange` harness of
tests/messages/conftest.py): focal points submit alerts to one or three recipients, in scope
and out of it, and replay earlier ones; the relay runs (`tests.messages.conftest.relay`, the
function the ticker and the Celery task call; the app's own ticker may also relay at any
moment, as in production); two independent pollers per agency follow their cursor with random
page sizes; recipients acknowledge (received, decrypted, rejected; repeated, conflicting) and
an agency that is not a recipient tries to.

Checked at every step, against a plain model:

- each poller sees every delivered message addressed to its agency exactly once, in one order
  shared by every poller of that agency, with inbox numbers 1, 2, 3... (the cursor never skips);
  once the relay has settled, a poller that reaches the end has seen all of them;
- nothing out of scope is stored or delivered, and it leaves one `msg.rejected` event;
- a replay answers 200 with the original receipt and adds no message;
- acknowledgements are idempotent: one `msg.acked` per change of state, none for a repeat;
  a different final status is a 409; the sender's view of each recipient's status equals the
  model's;
- after the relay settles, the database's ledger (tests/inbox/conftest.py) has no problem.

Each example starts from an empty exchange (the world and keys stay). Budget: `state_settings`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from tests.hostile.conftest import audit_events_since, state_settings
from tests.inbox.conftest import ledger, mekong
from tests.messages.conftest import Exchange, relay

pytestmark = pytest.mark.hostile

SETTINGS = state_settings(examples=15, steps=20)
# What a poll returns depends on when the relay ran, so no draw may depend on it (Hypothesis
# replays a failing example by its draws): items are picked by a drawn index modulo the count.
PICK = st.integers(min_value=0, max_value=1_000)
TALLY: Counter[str] = Counter()  # what the run did, printed for the docs

FP = "VN-GDC/fp-hcm-01"
RECIPIENTS = ["HK-CED", "KR-KCS", "CN-GACC"]
POLLERS = [(agency, i) for agency in RECIPIENTS for i in (0, 1)]
FINAL = ("decrypted", "rejected")


def route(ex: Exchange, kind: str) -> dict[str, Any]:
    """Routing for an in-scope alert of `kind`."""
    if kind == "hk":
        return ex.routing(FP)
    if kind == "kr":
        return ex.routing(
            FP,
            recipients=["KR-KCS"],
            agreement="VN-KR-CUSTOMS",
            offence="narcotics",
            subject_types=["person", "shipment"],
        )
    return mekong(ex)


def out_of_scope(ex: Exchange, flaw: str) -> dict[str, Any]:
    """Routing the agreement does not cover (the signature and encryption are valid)."""
    if flaw == "offence":
        return ex.routing(FP, offence="human_trafficking")
    if flaw == "recipient":  # KR-KCS is no party to the VN-HK agreement
        return ex.routing(FP, recipients=["HK-CED", "KR-KCS"])
    return ex.routing(FP, subject_types=["online_platform"])


def reset_exchange() -> None:
    """Empty what messages create; the world, keys and tokens stay.

    The outbox goes first: the app's ticker may be relaying, and the relay locks its outbox
    rows before the deliveries and counters, so taking them in the same order never deadlocks
    (deliveries first did, once in a CI run on PostgreSQL: "deadlock detected").
    """
    from broker.messages.models import Delivery, InboxCounter, Message, Outbox
    from broker.push.models import PushAttempt

    async def empty(s: AsyncSession) -> None:
        for table in (Outbox, PushAttempt, Delivery, Message, InboxCounter):
            await s.execute(delete(table))

    db.call(empty)


def settle(timeout_s: float = 10.0) -> None:
    """Run the relay until nothing is queued (the ticker may hold rows for a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        relay()
        if ledger().settled:
            return
        assert time.monotonic() < deadline, "the relay did not settle"
        time.sleep(0.05)


@dataclass
class Poller:
    cursor: str = ""
    seen: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Sent:
    routing: dict[str, Any]
    envelope: str
    receipt: dict[str, Any]


class InboxMachine(RuleBasedStateMachine):
    def __init__(self, ex: Exchange) -> None:
        super().__init__()
        reset_exchange()
        self.ex = ex
        self.sent: dict[str, Sent] = {}  # mid -> what was accepted
        self.settled: set[str] = set()  # mids the relay has certainly delivered
        self.pollers = {p: Poller() for p in POLLERS}
        self.order: dict[str, dict[int, str]] = {a: {} for a in RECIPIENTS}  # seq -> mid
        self.acks: dict[tuple[str, str], tuple[str, str | None]] = {}
        self.seen_events: set[Any] = set()
        audit_events_since(self.seen_events)
        self.outsider_tries = 0  # a couple per example is enough: the answer never varies

    def events(self, kind: str) -> int:
        """How many `kind` audit events were added since the last look (all new ones are consumed:
        polls add `msg.fetched`, the relay and the ticker `msg.delivered`)."""
        return sum(1 for k, _ in audit_events_since(self.seen_events) if k == kind)

    def addressed(self, agency: str) -> set[str]:
        return {m for m, s in self.sent.items() if agency in s.routing["recipients"]}

    # -- submit -------------------------------------------------------------------------------

    @initialize(kinds=st.lists(st.sampled_from(["hk", "kr", "mekong"]), min_size=1, max_size=3))
    def some_delivered(self, kinds: list[str]) -> None:
        """Start with a few delivered alerts, so that polls and acks reach deep states."""
        for kind in kinds:
            self.submit(kind)
        self.run_relay()

    @rule(kind=st.sampled_from(["hk", "kr", "mekong"]))
    def submit(self, kind: str) -> None:
        routing = route(self.ex, kind)
        envelope = self.ex.envelope(routing)
        response = self.ex.submit(envelope, routing)
        TALLY["submit"] += 1
        assert response.status_code == 201, response.text
        assert self.events("msg.accepted") == 1
        self.sent[routing["mid"]] = Sent(routing, envelope, response.json())

    @rule(flaw=st.sampled_from(["offence", "recipient", "subject"]))
    def submit_out_of_scope(self, flaw: str) -> None:
        routing = out_of_scope(self.ex, flaw)
        before = len(ledger().messages)
        response = self.ex.submit(self.ex.envelope(routing), routing)
        TALLY["refused"] += 1
        assert response.status_code in (403, 422), response.text
        assert response.status_code != 500
        assert len(ledger().messages) == before, "an out-of-scope alert was stored"
        assert self.events("msg.rejected") == 1

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(list(self.sent)))  # submission order, not random mids
        sent = self.sent[mid]
        before = len(ledger().messages)
        response = self.ex.submit(sent.envelope, sent.routing)
        TALLY["replay"] += 1
        assert response.status_code == 200, response.text
        assert response.json()["receipt"] == sent.receipt["receipt"]
        assert len(ledger().messages) == before
        assert self.events("msg.accepted") == 0

    # -- relay and poll -------------------------------------------------------------------------

    @rule()
    def run_relay(self) -> None:
        settle()
        TALLY["relay"] += 1
        self.settled = set(self.sent)
        assert ledger().problems(list(self.sent)) == []

    @rule(
        poller=st.sampled_from(POLLERS),
        limit=st.integers(min_value=1, max_value=4),
        then_ack=st.none() | st.sampled_from(["received", "decrypted", "rejected"]),
        pick=PICK,
    )
    def poll_then_ack(
        self, poller: tuple[str, int], limit: int, then_ack: str | None, pick: int
    ) -> None:
        """Poll a page; as a partner system would, acknowledge one of its items at once."""
        self.follow_cursor(poller, limit)
        seen = self.pollers[poller].seen
        if then_ack and seen:
            _, mid = seen[pick % len(seen)]
            self.acknowledge(poller[0], mid, then_ack, "decrypt_failed")

    def follow_cursor(self, poller: tuple[str, int], limit: int) -> None:
        agency, _ = poller
        state = self.pollers[poller]
        response = self.ex.client.get(
            "/v1/inbox",
            params={"after": state.cursor, "limit": limit},
            headers=self.ex.agency_headers(agency),
        )
        TALLY["poll"] += 1
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        # Urgent copies not yet fetched lead the page, some from beyond `next_cursor` (`ahead`:
        # they come again in order); the others cover every seq up to `next_cursor`.
        cursor = int(page["next_cursor"])
        for item in page["items"]:
            assert item["ahead"] == (item["seq"] > cursor)
            assert str(item["mid"]) in self.addressed(agency)
        items = sorted((i["seq"], str(i["mid"])) for i in page["items"] if not i["ahead"])
        seen_mids = {mid for _, mid in state.seen}
        for seq, mid in items:
            assert seq == len(state.seen) + 1, (
                f"{poller}: cursor skipped to {seq} after {state.seen}"
            )
            assert mid in self.addressed(agency), f"{agency} got {mid}, not addressed to it"
            assert mid not in seen_mids, f"{poller} saw {mid} twice"
            known = self.order[agency].setdefault(seq, mid)
            assert known == mid, f"{agency} #{seq} is {mid} for one poller, {known} for another"
            state.seen.append((seq, mid))
            seen_mids.add(mid)
        item = page["items"][-1] if page["items"] else None
        if item is not None:
            assert item["envelope"] == self.sent[str(item["mid"])].envelope
        assert page["next_cursor"] == str(state.seen[-1][0] if state.seen else 0)
        state.cursor = page["next_cursor"]
        if not page["more"]:  # the end of the inbox: every settled message has been seen
            missing = (self.settled & self.addressed(agency)) - seen_mids
            assert not missing, f"{poller} reached the end without {missing}"

    # -- acknowledge ----------------------------------------------------------------------------

    @rule(
        which=PICK,
        pick=PICK,
        status=st.sampled_from(["received", "decrypted", "rejected"]),
        reason=st.sampled_from(["decrypt_failed", "bad_signature"]),
    )
    def ack(self, which: int, pick: int, status: str, reason: str) -> None:
        pollers = [p for p in POLLERS if self.pollers[p].seen]
        if not pollers:
            return  # nothing polled yet (the relay's timing decides, not the drawn steps)
        poller = pollers[which % len(pollers)]
        _, mid = self.pollers[poller].seen[pick % len(self.pollers[poller].seen)]
        self.acknowledge(poller[0], mid, status, reason)

    def acknowledge(self, agency: str, mid: str, status: str, reason: str) -> None:
        why = reason if status == "rejected" else None
        current = self.acks.get((mid, agency))
        if current is None or (current[0] == "received" and status in FINAL):
            expect, change = 200, True
        elif current == (status, why) or (current[0] in FINAL and status == "received"):
            expect, change = 200, False  # the same again, or a late `received`: nothing new
        else:
            expect, change = 409, False  # a different final status
        response = self.ex.ack(agency, mid, self.sent[mid].envelope, status, why)
        TALLY[f"ack {expect}"] += 1
        assert response.status_code == expect, response.text
        assert self.events("msg.acked") == (1 if change else 0)
        if change:
            self.acks[(mid, agency)] = (status, why)
        if expect == 200:
            out = response.json()
            assert (out["status"], out["reason"]) == self.acks[(mid, agency)]

    @precondition(lambda self: self.settled and self.outsider_tries < 2)
    @rule(which=PICK, pick=PICK)
    def outsider_ack(self, which: int, pick: int) -> None:
        """An agency acknowledges a message that was not sent to it: 404, nothing recorded."""
        # Picked by index in submission order: how many outsiders a message has depends on its
        # kind, so a draw among them would change the number of draws between replays.
        settled = [m for m in self.sent if m in self.settled]
        mid = settled[which % len(settled)]
        outsiders = [
            a for a in ["VN-GDC", *RECIPIENTS] if a not in self.sent[mid].routing["recipients"]
        ]
        agency = outsiders[pick % len(outsiders)]
        response = self.ex.ack(agency, mid, self.sent[mid].envelope, "received")
        self.outsider_tries += 1
        TALLY["ack foreign"] += 1
        assert response.status_code == 404, response.text
        assert self.events("msg.acked") == 0

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def sender_sees_the_modelled_status(self) -> None:
        """GET /v1/messages/{mid} (the sender) reports each recipient's acknowledgement as modelled."""
        for (mid, agency), (status, reason) in self.acks.items():
            response = self.ex.client.get(
                f"/v1/messages/{mid}",
                headers=self.ex.fp_headers(self.sent[mid].routing["sender_fp"]),
            )
            assert response.status_code == 200, response.text
            per = {d["recipient"]: d for d in response.json()["deliveries"]}
            assert (per[agency]["ack_status"], per[agency]["ack_reason"]) == (status, reason)
            assert per[agency]["state"] == "acknowledged"


def test_inbox_state_machine(exchange: Exchange, backend: str) -> None:
    TALLY.clear()
    run_state_machine_as_test(lambda: InboxMachine(exchange), settings=SETTINGS)
    print(f"\ninbox state machine {backend}: {dict(TALLY)}")
    assert all(TALLY[k] for k in ("submit", "poll", "ack 200", "ack 409", "refused", "replay"))
