"""Lifecycle fixtures: the HTTP exchange (tests/messages), with the app's purge job held back.

The tests move messages' acceptance times years back and purge when they say so: the embedded
ticker's own purge job would otherwise take them first, at a moment no test chooses.
"""

import pytest

from broker import jobs, ticker
from broker.lifecycle import jobs as lifecycle_jobs
from tests.messages.conftest import exchange as exchange


@pytest.fixture(autouse=True)
def _no_ticker_purge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle_jobs, "install", lambda: None)
    monkeypatch.delitem(ticker._jobs, jobs.PURGE, raising=False)
