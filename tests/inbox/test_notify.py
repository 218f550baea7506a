"""Long-poll wake-ups over Redis pub/sub (production profile): quiet periods and reconnects."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from broker.config import Profile, settings
from broker.inbox import notify

pytestmark = pytest.mark.redis


def test_the_listener_stays_subscribed_through_quiet_periods(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = settings().model_copy(update={"redis_url": redis_url, "profile": Profile.production})
    monkeypatch.setattr(notify, "settings", lambda: cfg)
    agency = f"XX-{uuid.uuid4().hex[:8].upper()}"
    before = notify.board.version(agency)
    threading.Thread(target=notify._listen, name="test-inbox-listener", daemon=True).start()
    # Subscribing wakes every waiter once: wake-ups published before it would be lost.
    assert notify.board.wait(agency, before, 10)
    subscribed = notify.board.version(agency)
    # Longer than the 5 s socket timeout that used to drop the subscription every 5 s and
    # lose the wake-ups published while it reconnected.
    time.sleep(6)
    notify.publish([agency])
    assert notify.board.wait(agency, subscribed, 2)
    # Exactly the publish, no reconnect; an app started earlier in this process (production
    # profile) has its own listener, which hears the same channel and bumps once more.
    others = sum(t.name == "inbox-listener" and t.is_alive() for t in threading.enumerate())
    time.sleep(0.2)
    assert notify.board.version(agency) == subscribed + 1 + others


def test_bump_all_wakes_waiters_of_every_inbox() -> None:
    agency = f"XX-{uuid.uuid4().hex[:8].upper()}"
    seen = notify.board.version(agency)
    woken = threading.Event()

    def waiter() -> None:
        if notify.board.wait(agency, seen, 5):
            woken.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    notify.board.bump_all()
    thread.join(5)
    assert woken.is_set()
