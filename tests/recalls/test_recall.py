"""Recall (issue 18.3): the sender withdraws a message; copies not fetched are withdrawn at
once, recipients that hold one get a signed recall notice in their inbox and answer it.

Over the HTTP API with the exchange harness (real signed, encrypted envelopes), on SQLite and
PostgreSQL; the race with a fetch runs on PostgreSQL, where transactions overlap.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from uuid_utils.compat import uuid7

from broker import db
from broker.crypto import envelope as env
from broker.inbox import service as inbox
from broker.recalls import service as recalls
from tests.inbox.conftest import agency, focal_point
from tests.inbox.test_metrics import scrape
from tests.messages.conftest import Exchange, relay

FP = "VN-GDC/fp-hcm-01"
MEKONG = {
    "recipients": ["CN-GACC", "HK-CED", "KR-KCS"],
    "agreement": "MEKONG-DRAGON",
    "operation": "MEKONG-DRAGON-V",
    "offence": "narcotics",
    "subject_types": ["conveyance", "person"],
}


def recall_jws(
    ex: Exchange, mid: str, *, fp: str = FP, reason: str = "wrong_recipient", **extra: Any
) -> tuple[str, str]:
    rid = str(uuid7())
    payload = {
        "v": 1,
        "rid": rid,
        "mid": mid,
        "sender": fp.split("/")[0],
        "sender_fp": fp,
        "reason": reason,
        "iat": int(time.time()),
        **extra,
    }
    return env.sign_compact(payload, ex.signing[fp], env.TYP_RECALL), rid


def post_recall(ex: Exchange, mid: str, jws: str, fp: str = FP) -> Any:
    return ex.client.post(
        f"/v1/messages/{mid}/recall", json={"recall": jws}, headers=ex.fp_headers(fp)
    )


def compliance_jws(
    ex: Exchange, agency_id: str, mid: str, rid: str, status: str = "erased", **extra: Any
) -> str:
    payload = {"v": 1, "rid": rid, "mid": mid, "status": status, "at": int(time.time() * 1000)}
    return env.sign_compact(
        {**payload, **extra}, ex.agency_signing[agency_id], env.TYP_RECALL_COMPLIANCE
    )


def answer(ex: Exchange, agency_id: str, mid: str, jws: str) -> Any:
    return ex.client.post(
        f"/v1/inbox/{mid}/compliance",
        json={"compliance": jws},
        headers=ex.agency_headers(agency_id),
    )


def inbox_of(ex: Exchange, agency_id: str) -> list[dict[str, Any]]:
    response = ex.client.get("/v1/inbox?limit=100", headers=ex.agency_headers(agency_id))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def status(ex: Exchange, mid: str) -> dict[str, Any]:
    response = ex.client.get(f"/v1/messages/{mid}", headers=ex.fp_headers(FP))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def sent(ex: Exchange, **overrides: Any) -> str:
    response, routing, _ = ex.send(**overrides)
    assert response.status_code == 201, response.text
    relay()
    return str(routing["mid"])


def test_copies_not_fetched_are_withdrawn_and_holders_get_a_notice(exchange: Exchange) -> None:
    mid = sent(exchange, **MEKONG)
    assert [i["mid"] for i in inbox_of(exchange, "HK-CED")] == [mid]  # HK-CED fetched it
    jws, rid = recall_jws(exchange, mid, reason="inaccurate")

    response = post_recall(exchange, mid, jws)
    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["rid"], result["reason"]) == (rid, "inaccurate")
    outcomes = {r["recipient"]: r["outcome"] for r in result["recipients"]}
    assert outcomes == {"CN-GACC": "withdrawn", "HK-CED": "notified", "KR-KCS": "withdrawn"}
    relay()

    # Withdrawn: never served, never acknowledged; the sender's status says so.
    assert inbox_of(exchange, "CN-GACC") == []
    states = {d["recipient"]: d["state"] for d in status(exchange, mid)["deliveries"]}
    assert states == {"CN-GACC": "recalled", "HK-CED": "fetched", "KR-KCS": "recalled"}
    # The holder's inbox carries the sender's signed statement, unchanged, as the notice.
    notice = [i for i in inbox_of(exchange, "HK-CED") if i["kind"] == "recall"]
    assert [(n["mid"], n["envelope"]) for n in notice] == [(rid, jws)]
    assert notice[0]["ahead"] is False
    payload = env.verify_compact(jws, exchange.signing[FP].public.jwk, env.TYP_RECALL)
    assert payload["mid"] == mid

    erased = compliance_jws(exchange, "HK-CED", mid, rid)
    done = answer(exchange, "HK-CED", mid, erased)
    assert done.status_code == 200, done.text
    assert (done.json()["compliance"], done.json()["late"]) == ("erased", False)
    recall = status(exchange, mid)["recall"]
    hk = next(r for r in recall["recipients"] if r["recipient"] == "HK-CED")
    assert (hk["compliance"], hk["overdue"]) == ("erased", False)
    # The same answer again is the first; another one is refused; a copy never notified has
    # nothing to answer.
    assert answer(exchange, "HK-CED", mid, erased).json() == done.json()
    retained = compliance_jws(exchange, "HK-CED", mid, rid, "retained", legal_ground="Case 12")
    assert answer(exchange, "HK-CED", mid, retained).json()["code"] == "recall.already_answered"
    other = answer(exchange, "CN-GACC", mid, compliance_jws(exchange, "CN-GACC", mid, rid))
    assert other.status_code == 404


def test_a_recall_leaves_every_invariant(exchange: Exchange) -> None:
    """Withdrawn copies, the notice and the events satisfy the invariant checker."""
    from broker.invariants import service as invariants

    response, routing, _ = exchange.send(**MEKONG)
    assert response.status_code == 201
    mid = str(routing["mid"])
    assert post_recall(exchange, mid, recall_jws(exchange, mid)[0]).status_code == 201
    relay()
    states = {d["state"] for d in status(exchange, mid)["deliveries"]}
    assert states == {"recalled"}
    report = db.call(invariants.check)
    assert report.violations == [], report.violations


def test_a_second_recall_answers_with_the_first(exchange: Exchange) -> None:
    mid = sent(exchange)
    first = post_recall(exchange, mid, recall_jws(exchange, mid)[0])
    assert first.status_code == 201
    again = post_recall(exchange, mid, recall_jws(exchange, mid, reason="inaccurate")[0])
    assert again.status_code == 200
    assert again.json() == first.json()


def test_refusals(exchange: Exchange) -> None:
    mid = sent(exchange)
    # Another agency's focal point recalling VN-GDC's message.
    hk_jws, _ = recall_jws(exchange, mid, fp="HK-CED/fp-01")
    refused = post_recall(exchange, mid, hk_jws, fp="HK-CED/fp-01")
    assert (refused.status_code, refused.json()["code"]) == (403, "recall.not_sender")
    unknown = str(uuid7())
    missing = post_recall(exchange, unknown, recall_jws(exchange, unknown)[0])
    assert missing.status_code == 404
    # Signed with another desk's key, for another message, or without the legal reference.
    other_desk = recall_jws(exchange, mid, fp="VN-GDC/fp-hn-01")[0]
    assert post_recall(exchange, mid, other_desk).json()["code"] == "recall.key_not_signer"
    other_mid = recall_jws(exchange, str(uuid7()))[0]
    assert post_recall(exchange, mid, other_mid).json()["code"] == "recall.invalid"
    bare = recall_jws(exchange, mid, reason="erasure_request")[0]
    invalid = post_recall(exchange, mid, bare)
    assert (invalid.status_code, invalid.json()["code"]) == (422, "recall.invalid")
    assert invalid.json()["errors"][0]["pointer"] == "/recall/legal_reference"
    with_reference = recall_jws(
        exchange, mid, reason="erasure_request", legal_reference="HCMC-PC-2026/0917"
    )[0]
    assert post_recall(exchange, mid, with_reference).status_code == 201


def test_an_answer_missing_after_the_deadline_is_flagged(exchange: Exchange) -> None:
    # MEKONG-DRAGON has no recall_deadline: the default week.
    mid = sent(exchange, **MEKONG)
    inbox_of(exchange, "KR-KCS")
    jws, rid = recall_jws(exchange, mid)
    assert post_recall(exchange, mid, jws).status_code == 201
    gauge = ("broker_recall_answers_overdue", (("recipient", "KR-KCS"),))
    assert scrape(exchange.client).get(gauge, 0) == 0
    with time_machine.travel(datetime.now(UTC) + timedelta(days=8), tick=True):
        kr = next(
            r for r in status(exchange, mid)["recall"]["recipients"] if r["recipient"] == "KR-KCS"
        )
        assert kr["overdue"] is True
        assert scrape(exchange.client)[gauge] == 1
        late = answer(exchange, "KR-KCS", mid, compliance_jws(exchange, "KR-KCS", mid, rid))
        assert late.json()["late"] is True
        assert scrape(exchange.client).get(gauge, 0) == 0


@pytest.mark.postgres
def test_a_recall_racing_a_fetch_leaves_the_message_unseen_or_a_notice(keys: Exchange) -> None:
    """Poll and recall at once, many times: the recipient either never saw the message, or
    it saw it and holds a recall notice for it; never the message without the notice."""
    from tests.inbox.conftest import submit

    hk, vn = agency("HK-CED"), focal_point(FP)
    outcomes: list[str] = []
    for _ in range(12):
        cursor = db.call(inbox.poll, hk, None, 1000).next_cursor
        mid = submit(keys, keys.routing())
        relay()
        jws, _ = recall_jws(keys, mid)
        served: list[bool] = []
        start = threading.Barrier(2)

        def poll(
            after: str = cursor, mid: str = mid, start: Any = start, served: Any = served
        ) -> None:
            start.wait()
            page = db.call(inbox.poll, hk, after, 1000)
            served.append(any(str(i.mid) == mid for i in page.items))

        def recall(mid: str = mid, jws: str = jws, start: Any = start) -> None:
            start.wait()
            db.call(recalls.recall, vn, uuid.UUID(mid), jws)

        threads = [threading.Thread(target=poll), threading.Thread(target=recall)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        relay()
        outcome = db.call(_outcome, mid)
        later = db.call(inbox.poll, hk, cursor, 1000)
        notices = [i for i in later.items if i.kind == "recall"]
        if served[0]:
            assert outcome == "notified"
            assert [n.envelope for n in notices] == [jws]
        else:
            assert outcome == "withdrawn"
            assert notices == []
            assert all(str(i.mid) != mid for i in later.items)
        outcomes.append(outcome)
    print(f"\nrecall vs fetch: {outcomes.count('notified')} notified, "
          f"{outcomes.count('withdrawn')} withdrawn")  # fmt: skip


async def _outcome(session: Any, mid: str) -> str:
    from sqlalchemy import select

    from broker.messages.models import Message
    from broker.recalls.models import Recall, RecallRecipient

    stmt = (
        select(RecallRecipient.outcome)
        .join(Recall, Recall.id == RecallRecipient.recall_id)
        .join(Message, Message.id == Recall.message_id)
        .where(Message.mid == uuid.UUID(mid))
    )
    return str((await session.execute(stmt)).scalar_one())
