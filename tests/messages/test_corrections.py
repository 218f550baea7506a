"""Corrections: a message superseding the sender's earlier one, same agreement and recipients."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from broker import db
from broker.audit.models import AuditEvent
from tests.messages.conftest import Exchange

FP = "VN-GDC/fp-hcm-01"


def submit(ex: Exchange, routing: dict[str, Any]) -> Any:
    return ex.client.post(
        "/v1/messages",
        json={"envelope": ex.envelope(routing)},
        headers={**ex.fp_headers(routing["sender_fp"]), "Idempotency-Key": routing["mid"]},
    )


def sent(ex: Exchange, **overrides: Any) -> str:
    routing = ex.routing(**overrides)
    answer = submit(ex, routing)
    assert answer.status_code == 201, answer.text
    return str(routing["mid"])


def status(ex: Exchange, mid: str) -> dict[str, Any]:
    answer = ex.client.get(f"/v1/messages/{mid}", headers=ex.fp_headers(FP))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def refused(ex: Exchange, routing: dict[str, Any]) -> tuple[int, str]:
    answer = submit(ex, routing)
    check = ex.client.post(
        "/v1/messages:check", json={"routing": routing}, headers=ex.fp_headers(FP)
    )
    assert check.json()["code"] == answer.json()["code"], "the dry run says the same"
    return answer.status_code, answer.json()["code"]


def test_a_correction_links_both_ways_and_is_on_the_log(exchange: Exchange) -> None:
    earlier = sent(exchange)
    later = sent(exchange, supersedes=earlier)
    assert status(exchange, earlier)["superseded_by"] == later
    assert status(exchange, later)["supersedes"] == earlier
    assert status(exchange, later)["superseded_by"] is None
    details = db.call(
        lambda s: s.scalars(select(AuditEvent.details).where(AuditEvent.kind == "msg.accepted"))
    )
    [logged] = [d for d in details if d["mid"] == later]
    assert logged["supersedes"] == earlier
    # A correction of the correction goes on; the original is corrected once.
    assert status(exchange, sent(exchange, supersedes=later))["supersedes"] == later


def test_a_correction_to_other_recipients_or_under_another_agreement_is_refused(
    exchange: Exchange,
) -> None:
    mekong = sent(
        exchange,
        recipients=["HK-CED", "KR-KCS"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["conveyance", "person"],
    )
    fewer = exchange.routing(
        supersedes=mekong,
        recipients=["HK-CED"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["conveyance", "person"],
    )
    assert refused(exchange, fewer) == (422, "correction.recipients_differ")
    other_agreement = exchange.routing(
        supersedes=mekong,
        recipients=["HK-CED", "KR-KCS"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["conveyance", "person"],
    )
    assert submit(exchange, other_agreement).status_code == 201  # same agreement: accepted
    under_hk = exchange.routing(supersedes=mekong)
    assert refused(exchange, under_hk) == (422, "correction.agreement_differs")


def test_only_your_own_message_can_be_corrected_and_only_once(exchange: Exchange) -> None:
    assert refused(exchange, exchange.routing(supersedes=str(uuid.uuid4()))) == (
        422,
        "correction.unknown_message",
    )
    theirs = exchange.routing(
        "KR-KCS/fp-01",
        recipients=["VN-GDC"],
        agreement="VN-KR-CUSTOMS",
        offence="narcotics",
    )
    assert submit(exchange, theirs).status_code == 201, submit(exchange, theirs).text
    assert refused(exchange, exchange.routing(supersedes=theirs["mid"])) == (
        422,
        "correction.unknown_message",
    )
    earlier = sent(exchange)
    later = sent(exchange, supersedes=earlier)
    code = refused(exchange, exchange.routing(supersedes=earlier))
    assert code == (409, "correction.already_superseded")
    answer = submit(exchange, exchange.routing(supersedes=earlier))
    assert later in answer.json()["detail"]


def test_a_purged_message_cannot_be_corrected(exchange: Exchange) -> None:
    from datetime import UTC, datetime, timedelta

    from broker.lifecycle import service as lifecycle
    from tests.lifecycle.test_retention import age, message_row

    earlier = sent(exchange)
    age(earlier, datetime.now(UTC) - timedelta(days=6 * 366))
    db.call(lifecycle.purge)  # unless the app's own purge job was first
    assert message_row(earlier).purged_at is not None
    assert refused(exchange, exchange.routing(supersedes=earlier)) == (410, "message.purged")
