"""Delivery metrics on /metrics, and the acknowledgement deadline (`overdue`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import time_machine
from prometheus_client.parser import text_string_to_metric_families

from broker.inbox import metrics
from tests.conftest import SCRAPER
from tests.inbox.conftest import submit
from tests.messages.conftest import Exchange, relay


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics.collector.invalidate()
    response = client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def count(values: dict[Any, float], name: str) -> float:
    return values.get((f"{name}_count", ()), 0.0)


LATENCIES = (
    "broker_delivery_accepted_to_available_seconds",
    "broker_delivery_available_to_fetched_seconds",
    "broker_delivery_accepted_to_acknowledged_seconds",
)


def test_latencies_and_queue_depth_are_exposed(exchange: Exchange) -> None:
    before = scrape(exchange.client)
    response, routing, envelope = exchange.send()
    assert response.status_code == 201
    relay()
    inbox = exchange.agency_headers("HK-CED")
    assert len(exchange.client.get("/v1/inbox", headers=inbox).json()["items"]) == 1
    assert len(exchange.client.get("/v1/inbox", headers=inbox).json()["items"]) == 1  # again
    assert exchange.ack("HK-CED", routing["mid"], envelope).status_code == 200
    after = scrape(exchange.client)
    # One observation each: the second fetch of the same delivery is not a first fetch.
    assert [count(after, n) - count(before, n) for n in LATENCIES] == [1.0, 1.0, 1.0]
    for topic in ("deliver", "push"):
        assert after[("broker_outbox_pending", (("topic", topic),))] == 0
        assert after[("broker_outbox_dead_letters", (("topic", topic),))] == 0
    assert after[("broker_delivery_metrics_up", ())] == 1


def collected() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics.collector.invalidate()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.collector.collect()
        for sample in family.samples
    }


def test_queue_depth_counts_what_is_not_relayed_yet(keys: Exchange) -> None:
    for _ in range(3):
        submit(keys, keys.routing())
    values = collected()
    assert values[("broker_outbox_pending", (("topic", "deliver"),))] == 3
    assert values[("broker_outbox_retrying", (("topic", "deliver"),))] == 0
    assert values[("broker_outbox_oldest_pending_seconds", (("topic", "deliver"),))] >= 0
    relay()
    values = collected()
    assert values[("broker_outbox_pending", (("topic", "deliver"),))] == 0
    assert values[("broker_outbox_oldest_pending_seconds", (("topic", "deliver"),))] == 0


def test_overdue_flag_and_gauge_follow_the_agreements_ack_deadline(exchange: Exchange) -> None:
    # VN-HK-CMAA-2013: ack_deadline PT24H (PT4H for urgent alerts)
    response, routing, envelope = exchange.send(priority="routine")
    assert response.status_code == 201
    relay()
    sender = exchange.fp_headers("VN-GDC/fp-hcm-01")
    url = f"/v1/messages/{routing['mid']}"

    def overdue() -> bool:
        (delivery,) = exchange.client.get(url, headers=sender).json()["deliveries"]
        return bool(delivery["overdue"])

    gauge = ("broker_deliveries_overdue", (("recipient", "HK-CED"),))
    assert overdue() is False
    assert scrape(exchange.client).get(gauge, 0) == 0
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=23), tick=True):
        assert overdue() is False
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=25), tick=True):
        assert overdue() is True
        assert scrape(exchange.client)[gauge] == 1
        assert exchange.ack("HK-CED", routing["mid"], envelope).status_code == 200
        assert overdue() is False  # acknowledged, even if late
        assert scrape(exchange.client).get(gauge, 0) == 0


def test_an_urgent_alert_has_the_agreements_shorter_deadline(exchange: Exchange) -> None:
    urgent, routine = (exchange.send(priority=p)[1]["mid"] for p in ("urgent", "routine"))
    relay()
    sender = exchange.fp_headers("VN-GDC/fp-hcm-01")

    def overdue(mid: str) -> bool:
        response = exchange.client.get(f"/v1/messages/{mid}", headers=sender)
        return bool(response.json()["deliveries"][0]["overdue"])

    gauge = ("broker_deliveries_overdue", (("recipient", "HK-CED"),))
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=3), tick=True):
        assert (overdue(urgent), overdue(routine)) == (False, False)
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=5), tick=True):
        assert (overdue(urgent), overdue(routine)) == (True, False)
        assert scrape(exchange.client)[gauge] == 1
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=25), tick=True):
        assert (overdue(urgent), overdue(routine)) == (True, True)
        assert scrape(exchange.client)[gauge] == 2


def test_the_sender_lists_overdue_copies_urgent_first(exchange: Exchange) -> None:
    routine = exchange.send(priority="routine")[1]["mid"]
    urgent = exchange.send(priority="urgent")[1]["mid"]
    relay()
    sender = exchange.fp_headers("VN-GDC/fp-hcm-01")

    def overdue() -> list[tuple[str, str]]:
        page = exchange.client.get("/v1/messages:overdue", headers=sender)
        assert page.status_code == 200, page.text
        return [(i["mid"], i["priority"]) for i in page.json()["items"]]

    assert overdue() == []
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=5), tick=True):
        assert overdue() == [(urgent, "urgent")]  # PT4H for urgent alerts, PT24H otherwise
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=25), tick=True):
        # The urgent one first, although the routine one was sent before it.
        assert overdue() == [(urgent, "urgent"), (routine, "routine")]
        # Another agency's principal sees none of VN-GDC's.
        other = exchange.client.get(
            "/v1/messages:overdue", headers=exchange.agency_headers("HK-CED")
        )
        assert other.json()["items"] == []


def test_metrics_survive_a_database_error(exchange: Exchange, monkeypatch: Any) -> None:
    from broker.inbox import repository

    async def broken(session: Any) -> Any:
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(repository, "outbox_stats", broken)
    values = scrape(exchange.client)
    assert values[("broker_delivery_metrics_up", ())] == 0  # and /metrics still answers
