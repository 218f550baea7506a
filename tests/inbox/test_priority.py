"""Urgent alerts first: an urgent copy not yet fetched is served at the head of the next page,
however long the backlog, and the cursor still skips nothing (issue 21.4).

Messages go through the service layer (real signed, encrypted envelopes); the inbox is read
as a partner reads it, following `next_cursor`.
"""

from __future__ import annotations

from typing import Any

from broker import db
from broker.inbox import service
from broker.sdk.agent import PageProgress
from tests.inbox.conftest import HK, agency, submit
from tests.messages.conftest import Exchange, relay

BACKLOG = 1000


def _poll(cursor: str | None, limit: int = 100) -> Any:
    return db.call(service.poll, agency(HK), cursor, limit)


def _backlog(keys: Exchange, n: int) -> list[str]:
    mids = [submit(keys, keys.routing(priority="routine")) for _ in range(n)]
    relay()
    return mids


def test_an_urgent_alert_comes_first_after_a_backlog_of_routine_ones(keys: Exchange) -> None:
    routine = _backlog(keys, BACKLOG)
    urgent = submit(keys, keys.routing(priority="urgent"))
    relay()

    first = _poll(None)
    assert str(first.items[0].mid) == urgent
    assert first.items[0].ahead
    assert first.items[0].seq == BACKLOG + 1
    # The rest of the page is the backlog's head, in order, and the cursor stops below the
    # first copy left out, never at the urgent one.
    assert [i.seq for i in first.items[1:]] == list(range(1, 100))
    assert not any(i.ahead for i in first.items[1:])
    assert first.next_cursor == "99"
    assert first.more

    # Followed to the end: every routine copy once, in order, and the urgent one again in
    # its place, now fetched and no longer ahead; nothing skipped.
    seen: list[tuple[int, str]] = []
    cursor = first.next_cursor
    while True:
        page = _poll(cursor)
        assert not any(i.ahead for i in page.items)
        seen += [(i.seq, str(i.mid)) for i in page.items]
        cursor = page.next_cursor
        if not page.more:
            break
    assert [s for s, _ in seen] == list(range(100, BACKLOG + 2))
    assert seen[-1][1] == urgent
    head = [str(i.mid) for i in first.items[1:]]
    assert sorted(head + [m for _, m in seen]) == sorted([*routine, urgent])


def test_urgent_copies_inside_the_page_keep_the_cursor_contiguous(keys: Exchange) -> None:
    """Urgent ones within reach come first too, but the page still holds every copy up to its
    cursor; one more than fits waits for the next page."""
    priorities = ["routine", "urgent", "routine", "urgent", "urgent", "routine", "routine"]
    mids = [submit(keys, keys.routing(priority=p)) for p in priorities]
    relay()
    page = _poll(None, limit=4)
    # Three urgent (seq 2, 4, 5) first, then the routine head (1); the cursor is 2 below the
    # first copy left out (3), and 4 and 5 are ahead of it.
    assert [i.seq for i in page.items] == [2, 4, 5, 1]
    assert page.next_cursor == "2"
    assert [i.ahead for i in page.items] == [False, True, True, False]
    rest = _poll(page.next_cursor, limit=10)
    assert [i.seq for i in rest.items] == [3, 4, 5, 6, 7]
    assert [str(i.mid) for i in rest.items] == mids[2:]
    assert rest.next_cursor == "7"
    assert not rest.more


def test_an_all_urgent_inbox_is_served_once_in_order(keys: Exchange) -> None:
    mids = [submit(keys, keys.routing(priority="urgent")) for _ in range(7)]
    relay()
    page = _poll(None, limit=3)
    assert [i.seq for i in page.items] == [1, 2, 3]
    assert page.next_cursor == "3"
    assert not any(i.ahead for i in page.items)
    rest = _poll(page.next_cursor, limit=10)
    assert [str(i.mid) for i in rest.items] == mids[3:]


def _page(items: list[tuple[int, bool]], next_cursor: str) -> dict[str, Any]:
    return {"items": [{"seq": s, "ahead": a} for s, a in items], "next_cursor": next_cursor}


def test_the_sdk_cursor_never_passes_an_unsettled_copy() -> None:
    # The page of the test above: urgent 2, 4, 5 first (4 and 5 ahead), then 1; cursor 2.
    progress = PageProgress(_page([(2, False), (4, True), (5, True), (1, False)], "2"))
    saved = [progress.settled({"seq": s}) for s in (2, 4, 5, 1)]
    # After 2 (1 still unsettled) the cursor may not move; 4 and 5 are ahead; after 1 it
    # moves to the page's cursor, never to 5.
    assert saved == [None, None, None, "2"]
    # A broker that orders pages in inbox order and sends no `ahead`: each item moves it.
    plain = PageProgress(_page([(1, False), (2, False), (3, False)], "3"))
    assert [plain.settled({"seq": s}) for s in (1, 2, 3)] == ["1", "2", "3"]
