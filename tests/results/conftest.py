"""A results scene: two test operations with phases, alerts, and feedback at chosen times.

Feedback goes through the real submit path (signed, encrypted envelopes POSTed to
/v1/messages). The broker's acceptance time is what places a feedback in a phase and a week,
so the submit path's clock (`broker.messages.service.utcnow`) is set to each message's chosen
instant, and the routing's `iat` with it: the whole message, its receipt, its `msg.accepted`
event and the leaf carry that instant. The instants lie ahead of the wall clock, inside the
keys' validity and the test operations' windows, which start now.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.ids import utcnow
from tests.conftest import bearer
from tests.messages.conftest import Exchange
from tests.messages.conftest import exchange as exchange  # the HTTP harness, for tests here too

ALPHA, BRAVO = "RESULTS-ALPHA", "RESULTS-BRAVO"
OUTCOMES = ("seized", "arrest", "controlled_delivery", "no_find", "false_positive")
COMMODITIES = ("narcotics", "precursors", "nps", "wildlife", "cash")
BANDS = ("lt_1kg", "1_10kg", "10_100kg", "100_1000kg", "n_a")
FP = {
    "VN-GDC": "VN-GDC/fp-hcm-01",
    "HK-CED": "HK-CED/fp-01",
    "KR-KCS": "KR-KCS/fp-01",
    "CN-GACC": "CN-GACC/fp-01",
    "TH-CUS": "TH-CUS/fp-01",
}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Clock:
    """The submit path's clock: `now` while set, the wall clock otherwise."""

    at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at if self.at is not None else utcnow()


@dataclass(frozen=True)
class Sent:
    """One feedback message as generated: what the hand count counts."""

    operation: str | None  # the alert's operation
    mid: str
    sender: str
    recipient: str
    at: datetime
    outcome: str
    commodity: str | None
    quantity_band: str | None


@dataclass
class Scene:
    exchange: Exchange
    clock: Clock
    t0: datetime
    operations: dict[str, dict[str, Any]]
    alerts: dict[str | None, list[tuple[str, str, list[str], str, str]]] = field(
        default_factory=dict
    )  # operation -> (mid, sender, recipients, agreement, offence)
    feedback: list[Sent] = field(default_factory=list)

    def submit_at(self, at: datetime, routing: dict[str, Any]) -> dict[str, Any]:
        self.clock.at = at
        try:
            routing["iat"] = int(at.timestamp())
            routing["exp"] = routing["iat"] + 7 * 86400
            response = self.exchange.submit(self.exchange.envelope(routing), routing)
        finally:
            self.clock.at = None
        assert response.status_code == 201, response.text
        return routing

    def alert(
        self,
        at: datetime,
        operation: str | None,
        sender: str,
        recipients: list[str],
        agreement: str,
        offence: str = "narcotics",
    ) -> str:
        routing = self.exchange.routing(
            FP[sender],
            recipients=sorted(recipients),
            agreement=agreement,
            operation=operation,
            offence=offence,
            subject_types=["shipment"],
            handling="TLP:AMBER",
        )
        self.submit_at(at, routing)
        self.alerts.setdefault(operation, []).append(
            (routing["mid"], sender, sorted(recipients), agreement, offence)
        )
        return str(routing["mid"])

    def reply(
        self,
        at: datetime,
        alert: tuple[str, str, list[str], str, str],
        sender: str,
        *,
        operation: str | None,
        counted_for: str | None,
        outcome: str,
        commodity: str | None,
        quantity_band: str | None,
        supersedes: str | None = None,
    ) -> Sent:
        mid, alert_sender, _, agreement, offence = alert
        extra = {
            k: v
            for k, v in (
                ("commodity", commodity),
                ("quantity_band", quantity_band),
                ("supersedes", supersedes),
            )
            if v
        }
        routing = self.exchange.routing(
            FP[sender],
            kind="feedback",
            recipients=[alert_sender],
            agreement=agreement,
            operation=operation,
            offence=offence,
            subject_types=["seizure"],
            handling="TLP:AMBER",
            in_reply_to=mid,
            outcome=outcome,
            **extra,
        )
        self.submit_at(at, routing)
        sent = Sent(
            counted_for, routing["mid"], sender, alert_sender, at, outcome, commodity, quantity_band
        )
        if counted_for is not None:
            self.feedback.append(sent)
        return sent


def operation_doc(
    op_id: str, agreement: str, members: list[str], coordinator: str, t0: datetime, phases: Any
) -> dict[str, Any]:
    return {
        "id": op_id,
        "agreement": agreement,
        "title": f"{op_id} (test operation)",
        "starts_at": iso(t0),
        "ends_at": iso(t0 + timedelta(weeks=8)),
        "members": sorted(members),
        "status": "active",
        "coordinator": coordinator,
        "phases": [
            {
                "name": name,
                "starts_at": iso(t0 + timedelta(weeks=a)),
                "ends_at": iso(t0 + timedelta(weeks=b)),
            }
            for name, a, b in phases
        ],
    }


@pytest.fixture
def scene(
    exchange: Exchange, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Scene:
    """Two operations starting now: ALPHA (Mekong Dragon, coordinated by VN-GDC, two phases
    then a gap) and BRAVO (Viet Nam-Korea, coordinated by KR-KCS, one phase); their alerts."""
    from broker.messages import service

    clock = Clock()
    monkeypatch.setattr(service, "utcnow", clock)
    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=1)
    ops = {
        ALPHA: operation_doc(
            ALPHA,
            "MEKONG-DRAGON",
            ["CN-GACC", "HK-CED", "KR-KCS", "TH-CUS", "VN-GDC"],
            "VN-GDC",
            t0,
            [("alpha-1", 0, 3), ("alpha-2", 3, 6)],
        ),
        BRAVO: operation_doc(
            BRAVO, "VN-KR-CUSTOMS", ["KR-KCS", "VN-GDC"], "KR-KCS", t0, [("sweep", 1, 5)]
        ),
    }
    for doc in ops.values():
        r = exchange.client.post("/v1/admin/operations", json=doc, headers=admin_headers)
        assert r.status_code == 201, r.text
    s = Scene(exchange, clock, t0, ops)
    at = t0 + timedelta(minutes=2)
    for _ in range(6):
        s.alert(at, ALPHA, "VN-GDC", ["CN-GACC", "HK-CED", "KR-KCS", "TH-CUS"], "MEKONG-DRAGON")
        s.alert(at, ALPHA, "HK-CED", ["VN-GDC"], "MEKONG-DRAGON")
        s.alert(at, BRAVO, "VN-GDC", ["KR-KCS"], "VN-KR-CUSTOMS")
        s.alert(at, BRAVO, "KR-KCS", ["VN-GDC"], "VN-KR-CUSTOMS")
    # Alerts of no test operation: their feedback counts for neither.
    s.alert(at, None, "VN-GDC", ["HK-CED"], "MEKONG-DRAGON")
    s.alert(at, "MEKONG-DRAGON-V", "VN-GDC", ["HK-CED"], "MEKONG-DRAGON")
    return s


def generate(scene: Scene, n: int, *, seed: int = 20) -> None:
    """`n` feedback messages on the operations' alerts at random instants over nine weeks
    (the last after the windows end), in time order; and a few on other alerts (not counted)."""
    rng = random.Random(seed)
    start = scene.t0 + timedelta(minutes=3)
    span_s = int(timedelta(weeks=9).total_seconds())
    instants = sorted(start + timedelta(seconds=rng.randrange(span_s)) for _ in range(n))
    ends = {op: datetime.fromisoformat(d["ends_at"]) for op, d in scene.operations.items()}
    for i, at in enumerate(instants):
        op = ALPHA if rng.random() < 0.65 else BRAVO
        alert = rng.choice(scene.alerts[op])
        sender = rng.choice(alert[2])
        # Feedback names the operation only while it runs (and not always): it counts for the
        # alert's operation either way.
        names = at < ends[op] and rng.random() < 0.7
        scene.reply(
            at,
            alert,
            sender,
            operation=op if names else None,
            counted_for=op,
            outcome=rng.choice(OUTCOMES),
            commodity=rng.choice((*COMMODITIES, None)),
            quantity_band=rng.choice((*BANDS, None)),
        )
        if i % 100 == 0:
            other = rng.choice(scene.alerts[None] + scene.alerts["MEKONG-DRAGON-V"])
            scene.reply(
                at,
                other,
                "HK-CED",
                operation=None,
                counted_for=None,
                outcome="seized",
                commodity="narcotics",
                quantity_band="1_10kg",
            )


def token(scene: Scene, role: str, **binding: Any) -> dict[str, str]:
    return bearer(scene.exchange.token_for(role, **binding))
