"""An inbox page has a byte budget (issue 15, 8b): envelopes past it are not even read.

A page holds items in inbox order while their envelopes add up to at most
`inbox_page_max_bytes`; the first item always comes back. `more` says another item is waiting
after the last one returned, and `next_cursor` is that last item's seq, so paging on goes on
exactly after it: nothing skipped, nothing twice, and only returned items are marked fetched.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker import config, db
from broker.audit.models import AuditEvent
from broker.inbox import service
from broker.inbox.schemas import InboxPage
from broker.messages import service as messages
from broker.messages.models import Delivery, Message
from tests.inbox.conftest import HK, agency, focal_point
from tests.messages.conftest import BODY, Exchange, relay


def send(ex: Exchange, count: int, padding: int = 0) -> None:
    """`count` alerts to HK-CED, each body padded by `padding` random characters; relayed."""
    for _ in range(count):
        routing = ex.routing()
        body = {**BODY, "summary": BODY["summary"] + secrets.token_urlsafe(padding)[:padding]}
        outcome = db.call(
            messages.submit,
            focal_point(routing["sender_fp"]),
            ex.envelope(routing, body),
            routing["mid"],
        )
        assert outcome.status == 201, outcome.refusal
    relay()


def sizes() -> list[int]:
    """HK-CED's envelope sizes in inbox order (index 0 is seq 1)."""
    rows = db.call(
        lambda s: s.execute(
            select(Delivery.inbox_seq, Message.envelope)
            .join(Message, Message.id == Delivery.message_id)
            .where(Delivery.recipient == HK)
            .order_by(Delivery.inbox_seq)
        )
    )
    found = [(seq, len(envelope.encode())) for seq, envelope in rows]
    assert [seq for seq, _ in found] == list(range(1, len(found) + 1))
    return [size for _, size in found]


def fetched_seqs() -> list[int]:
    """Seqs marked fetched, and (checked equal) those with a `msg.fetched` event."""

    async def read(s: AsyncSession) -> tuple[list[int], list[int]]:
        states = await s.execute(
            select(Delivery.inbox_seq)
            .where(Delivery.recipient == HK, Delivery.state == "fetched")
            .order_by(Delivery.inbox_seq)
        )
        by_mid = {
            str(mid): seq
            for mid, seq in await s.execute(
                select(Message.mid, Delivery.inbox_seq)
                .join(Message, Message.id == Delivery.message_id)
                .where(Delivery.recipient == HK)
            )
        }
        details = await s.scalars(
            select(AuditEvent.details).where(AuditEvent.kind == "msg.fetched")
        )
        evented = sorted(by_mid[d["mid"]] for d in details)
        return [seq for (seq,) in states], evented

    marked, evented = db.call(read)
    assert marked == evented
    return marked


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set the page budget for one test (assignment skips the settings' validation)."""

    def set_budget(value: int) -> None:
        monkeypatch.setattr(config.settings(), "inbox_page_max_bytes", value)

    return set_budget


def poll(after: str | None, limit: int = 100) -> InboxPage:
    return db.call(service.poll, agency(HK), after, limit)


def test_a_page_stops_at_the_budget_and_the_next_goes_on_exactly_after(
    keys: Exchange, budget: Any
) -> None:
    send(keys, 8, padding=6000)
    size = sizes()
    assert min(size) > 8000
    budget(size[0] + size[1] + size[2])  # exactly three fit: the bound is inclusive

    first = poll(None)
    assert [i.seq for i in first.items] == [1, 2, 3]
    assert (first.next_cursor, first.more) == ("3", True)
    assert fetched_seqs() == [1, 2, 3]  # only what was returned, and one event each

    budget(size[3] + size[4] + size[5] - 1)  # one byte short of three: two
    second = poll(first.next_cursor)
    assert [i.seq for i in second.items] == [4, 5]
    assert (second.next_cursor, second.more) == ("5", True)
    assert fetched_seqs() == [1, 2, 3, 4, 5]

    budget(10 * 1024 * 1024)
    rest = poll(second.next_cursor)
    assert [i.seq for i in rest.items] == [6, 7, 8]
    assert (rest.next_cursor, rest.more) == ("8", False)
    assert fetched_seqs() == list(range(1, 9))
    assert [i.envelope_sha256 for i in first.items + second.items + rest.items] == [
        i.envelope_sha256 for i in poll(None).items
    ]  # read again from the start: the same items, same order


def test_an_item_larger_than_the_budget_comes_back_alone(keys: Exchange, budget: Any) -> None:
    send(keys, 3, padding=3000)
    budget(100)
    seen: list[int] = []
    cursor, more = None, True
    while more:
        page = poll(cursor)
        assert len(page.items) == 1
        seen.append(page.items[0].seq)
        cursor, more = page.next_cursor, page.more
        assert cursor == str(seen[-1])
    assert seen == [1, 2, 3]
    empty = poll(cursor)
    assert (empty.items, empty.next_cursor, empty.more) == ([], "3", False)


def test_the_limit_still_cuts_and_more_says_whether_anything_is_left(keys: Exchange) -> None:
    send(keys, 4)
    assert sum(sizes()) < config.settings().inbox_page_max_bytes
    whole = poll(None)  # the default budget and ordinary envelopes: what a page was before
    assert ([i.seq for i in whole.items], whole.next_cursor, whole.more) == (
        [1, 2, 3, 4],
        "4",
        False,
    )
    first = poll(None, limit=2)
    assert ([i.seq for i in first.items], first.more) == ([1, 2], True)
    second = poll(first.next_cursor, limit=2)  # exactly the rest: nothing after it
    assert ([i.seq for i in second.items], second.more) == ([3, 4], False)
    end = poll("4")
    assert (end.items, end.next_cursor, end.more) == ([], "4", False)


def test_the_page_says_more_over_http(exchange: Exchange) -> None:
    for _ in range(2):
        assert exchange.send()[0].status_code == 201
    relay()
    hk = exchange.agency_headers(HK)
    pages = [
        exchange.client.get("/v1/inbox", params={"after": after, "limit": 1}, headers=hk).json()
        for after in ("0", "1", "2")
    ]
    assert [(len(p["items"]), p["next_cursor"], p["more"]) for p in pages] == [
        (1, "1", True),
        (1, "2", False),
        (0, "2", False),
    ]
    schema = exchange.client.get("/openapi.json").json()["components"]["schemas"]["InboxPage"]
    assert "more" in schema["required"]


def test_envelopes_past_the_budget_are_not_read_and_the_statements_stay_three(
    keys: Exchange, budget: Any
) -> None:
    """Every row the page's statements return to Python is looked at: past the budget, no
    envelope comes back from the database, and a first fetch costs the same three statements
    (the page, the fetched marks, their events)."""
    send(keys, 6, padding=6000)
    size = sizes()
    budget(size[0] + size[1])
    envelopes: dict[str, int] = {
        envelope: seq
        for envelope, seq in db.call(
            lambda s: s.execute(
                select(Message.envelope, Delivery.inbox_seq)
                .join(Message, Message.id == Delivery.message_id)
                .where(Delivery.recipient == HK)
            )
        )
    }

    async def watched(s: AsyncSession) -> tuple[InboxPage, list[int], list[str]]:
        read: list[int] = []
        statements: list[str] = []
        execute = s.execute

        async def recording(statement: Any, *args: Any, **kwargs: Any) -> Any:
            result = await execute(statement, *args, **kwargs)
            if getattr(result, "returns_rows", True) is False:  # DML without RETURNING
                return result
            frozen = result.freeze()
            read.extend(envelopes[v] for row in frozen.data for v in row if v in envelopes)
            return frozen()

        def seen(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().split()[0].upper() in {"SELECT", "INSERT", "UPDATE", "WITH"}:
                statements.append(statement)

        assert s.bind is not None
        engine = s.bind.sync_engine
        s.execute = recording  # type: ignore[method-assign]
        event.listen(engine, "before_cursor_execute", seen)
        try:
            page = await service.poll(s, agency(HK), None, 100)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
            del s.execute
        return page, read, statements

    page, read, statements = db.call(watched)
    assert [i.seq for i in page.items] == [1, 2]
    assert sorted(read) == [1, 2], "envelopes past the budget were read from the database"
    assert len(statements) == 3, statements


class _Broker:
    """Answers `inbox` with scripted pages and records each request's cursor and wait."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages, self.asked = pages, []

    def inbox(self, after: str | None, *, limit: int, wait: float) -> dict[str, Any]:
        self.asked.append((after, wait))
        return self.pages.pop(0)


def _item(seq: int) -> dict[str, Any]:
    return {"seq": seq, "mid": f"m{seq}", "sender": "VN-GDC"}


@pytest.mark.parametrize(
    ("pages", "asked"),
    [
        # more: straight back for the next page (no wait), and no trailing empty request
        (
            [
                {"items": [_item(1), _item(2)], "next_cursor": "2", "more": True},
                {"items": [_item(3)], "next_cursor": "3", "more": False},
            ],
            [(None, 5.0), ("2", 0)],
        ),
        # a broker without `more`: until an empty page, as before
        (
            [{"items": [_item(1)], "next_cursor": "1"}, {"items": [], "next_cursor": "1"}],
            [(None, 5.0), ("1", 0)],
        ),
    ],
)
def test_the_sdk_pulls_on_while_more_is_true(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pages: list[dict[str, Any]],
    asked: list[tuple[str | None, float]],
) -> None:
    from broker.sdk.agent import InboxPuller, Pulled

    expected = [item["seq"] for page in pages for item in page["items"]]
    broker = _Broker(pages)
    keystore = SimpleNamespace(encryption_keys=lambda _a: [], signing_key=lambda _a: None)
    puller = InboxPuller(broker, keystore, HK, tmp_path)  # type: ignore[arg-type]
    monkeypatch.setattr(
        InboxPuller,
        "_settle",
        lambda _self, item, *_: Pulled(item["seq"], item["mid"], item["sender"], "decrypted"),
    )
    pulled = puller.pull(wait=5.0)
    assert broker.asked == asked
    assert [p.seq for p in pulled] == expected
    assert puller.cursor() == str(expected[-1])


def test_a_budget_smaller_than_an_envelope_is_refused_at_start() -> None:
    from pydantic import ValidationError

    from broker.config import Settings

    assert Settings().inbox_page_max_bytes == 8 * 1024 * 1024
    with pytest.raises(ValidationError, match="at least BROKER_MAX_ENVELOPE_BYTES"):
        Settings(inbox_page_max_bytes=600 * 1024 - 1)
    assert Settings(inbox_page_max_bytes=1000, max_envelope_bytes=1000).inbox_page_max_bytes == 1000
