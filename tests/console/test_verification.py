"""Full log verification from the console: a background run, one at a time, its result kept.

The app's ticker stays idle here, so each test decides when the background job runs
(`jobs.verify_pending`) and when the log grows (`sequence_all`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import db
from broker.console import jobs
from broker.console.models import VerificationRun
from tests.audit.conftest import sequence_all
from tests.console.conftest import Traffic, form_token, same_origin, text_of


@pytest.fixture
def client(app: Any, clean_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The console's client with an idle ticker: nothing runs behind the test's back."""
    from fastapi.testclient import TestClient

    from broker import ticker

    monkeypatch.setattr(ticker.Ticker, "run", lambda self: None)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _runs() -> list[VerificationRun]:
    return list(
        db.call(lambda s: s.scalars(select(VerificationRun).order_by(VerificationRun.requested_at)))
    )


def _set_runs(**values: Any) -> None:
    db.call(lambda s: s.execute(update(VerificationRun).values(**values)))


def _click(client: Any) -> str:
    """ "Verify now" with "Full", as htmx posts it; the visible text of the answer."""
    response = client.post(
        "/console/log/verify",
        data={"full": "true", "csrf": form_token(client)},
        headers={**same_origin(), "HX-Request": "true"},
    )
    assert response.status_code == 200, response.text
    return text_of(response.text)


def _size() -> int:
    from broker.audit import repository

    size = db.call(repository.latest_size)
    assert size is not None
    return int(size)


def _long_ago() -> datetime:
    from broker.config import settings
    from broker.console import service

    limit = timedelta(seconds=settings().console_verify_timeout_s) + service.GRACE
    return datetime.now(UTC) - limit - timedelta(seconds=1)


class TestOneRunAtATime:
    def test_a_click_starts_one_background_run_and_a_second_does_not(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        size = _size()
        first = _click(client)
        assert "OK — the log verifies" in first  # the quick checks, in the request
        assert f"Queued — full verification of tree size {size}" in first
        (run,) = _runs()
        assert (run.status, run.tree_size, run.attempts) == ("queued", size, 0)
        assert run.requested_by.startswith("auditor:")
        second = _click(client)
        assert f"Queued — full verification of tree size {size}" in second
        assert len(_runs()) == 1
        # The page polls the run's state while it is under way, and starts nothing.
        poll = client.get("/console/log/full")
        assert 'hx-get="/console/log/full" hx-trigger="every 3s"' in poll.text
        assert len(_runs()) == 1

        assert jobs.verify_pending() == 1
        assert jobs.verify_pending() == 0  # nothing left: a duplicate task does nothing
        (run,) = _runs()
        assert (run.status, run.tree_size, run.attempts, run.active) == ("ok", size, 1, None)
        assert run.started_at is not None
        assert run.finished_at is not None
        assert any("leaves reproduce the root" in line for line in run.report)
        done = client.get("/console/log/full")
        assert "hx-trigger" not in done.text  # polling ends with the run

    def test_the_database_admits_one_active_run(self, clean_db: str) -> None:
        from broker.console import repository
        from broker.ids import new_id, utcnow

        def values() -> dict[str, Any]:
            return {
                "id": new_id(),
                "tree_size": 1,
                "root_hash": b"\0" * 32,
                "status": "queued",
                "active": True,
                "requested_by": "auditor:test",
                "requested_at": utcnow(),
                "attempts": 0,
                "report": [],
            }

        assert db.call(repository.add_run, values()) is True
        assert db.call(repository.add_run, values()) is False  # two clicks at once: one run
        assert len(_runs()) == 1


class TestTheCachedResult:
    def test_the_result_for_the_current_size_is_shown_and_not_recomputed(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        size = _size()
        _click(client)
        jobs.verify_pending()
        page = text_of(client.get("/console/log").text)
        assert f"OK — the log verifies in full at tree size {size}" in page
        assert "leaves reproduce the root" in page
        assert "Asked by auditor:" in page
        again = _click(client)
        assert f"OK — the log verifies in full at tree size {size}" in again
        assert len(_runs()) == 1

    def test_a_grown_log_waits_for_the_interval_then_verifies_again(
        self, client: Any, traffic: Traffic, auditor: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from broker.config import settings

        size = _size()
        _click(client)
        jobs.verify_pending()
        sequence_all()  # the clicks' own audit events grow the log
        grown = _size()
        assert grown > size
        shown = _click(client)
        assert f"OK — the log verifies in full at tree size {size}" in shown
        assert f"The log has grown by {grown - size} leaves" in shown
        assert "The next full verification can start after" in shown
        assert len(_runs()) == 1
        monkeypatch.setattr(settings(), "console_verify_interval_s", 0)
        grown = _size()
        assert f"Queued — full verification of tree size {grown}" in _click(client)
        jobs.verify_pending()
        latest = _runs()[-1]
        assert (latest.status, latest.tree_size) == ("ok", grown)
        # The new run also proves that the log only grew since the last one verified in full.
        assert f"consistent with the stored checkpoint size {size}" in " ".join(latest.report)

    def test_a_failure_is_kept_with_the_verifiers_code(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        from broker.audit.models import LogLeaf

        db.call(
            lambda s: s.execute(update(LogLeaf).where(LogLeaf.index == 1).values(leaf_bytes=b"{}"))
        )
        _click(client)
        jobs.verify_pending()
        (run,) = _runs()
        assert (run.status, run.code) == ("failed", "leaves")
        page = text_of(client.get("/console/log").text)
        assert "FAILED — leaves" in page
        assert "leaf 1: stored hash differs from its bytes" in page
        _click(client)
        assert len(_runs()) == 1  # a verdict for this size: shown, not recomputed

    def test_the_outcome_is_on_the_log(self, client: Any, traffic: Traffic, auditor: str) -> None:
        from broker.audit import repository

        _click(client)
        jobs.verify_pending()
        (run,) = _runs()
        events = db.call(repository.list_events, kind="audit.queried", limit=1000)
        clicks = [e for e in events if e.details.get("query") == "console.verify"]
        assert clicks[-1].details["run"] == str(run.id)
        assert clicks[-1].details["run_started"] is True
        (outcome,) = [e for e in events if e.details.get("query") == "console.verify_full"]
        assert outcome.details == {
            "query": "console.verify_full",
            "run": str(run.id),
            "size": run.tree_size,
            "result": "ok",
        }
        assert outcome.actor == run.requested_by


class TestNoLostRun:
    def test_a_run_whose_worker_died_is_taken_over_after_its_timeout(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        _click(client)
        _set_runs(status="running", attempts=1, started_at=datetime.now(UTC))
        assert jobs.verify_pending() == 0  # within its timeout: its worker is on it
        assert "Running — full verification" in text_of(client.get("/console/log/full").text)
        _set_runs(started_at=_long_ago())
        assert len(_runs()) == 1
        assert "Running — full verification" in _click(client)  # no second run either
        assert jobs.verify_pending() == 1
        (run,) = _runs()
        assert (run.status, run.attempts, run.active) == ("ok", 2, None)

    def test_a_run_whose_worker_died_twice_is_given_up(
        self, client: Any, traffic: Traffic, auditor: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from broker.config import settings

        _click(client)
        _set_runs(status="running", attempts=2, started_at=_long_ago())
        assert jobs.verify_pending() == 0
        (run,) = _runs()
        assert (run.status, run.code, run.active) == ("error", "abandoned", None)
        page = text_of(client.get("/console/log").text)
        assert "No verdict — abandoned" in page
        monkeypatch.setattr(settings(), "console_verify_interval_s", 0)
        assert "Queued — full verification" in _click(client)  # no verdict: a click may retry
        assert len(_runs()) == 2

    def test_a_late_worker_cannot_overwrite_the_run_taken_over(
        self, client: Any, traffic: Traffic, auditor: str
    ) -> None:
        from broker.console import service
        from broker.ids import utcnow

        _click(client)
        late = db.call(service._claim, utcnow())
        assert late is not None
        _set_runs(started_at=_long_ago())
        current = db.call(service._claim, utcnow())
        assert current is not None
        assert current.attempts == late.attempts + 1
        db.call(service._finish, late, service._Outcome("failed", "leaves", "stale", []), utcnow())
        (run,) = _runs()
        assert (run.status, run.attempts) == ("running", current.attempts)
        outcome = service._Outcome("ok", None, None, ["fine"])
        db.call(service._finish, current, outcome, utcnow())
        (run,) = _runs()
        assert (run.status, run.report) == ("ok", ["fine"])

    def test_a_run_is_bounded_by_its_timeout(
        self, client: Any, traffic: Traffic, auditor: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from broker.config import settings

        _click(client)
        monkeypatch.setattr(settings(), "console_verify_timeout_s", 0)
        assert jobs.verify_pending() == 1
        (run,) = _runs()
        assert (run.status, run.code, run.active) == ("error", "timeout", None)
        assert re.search(r"stopped after 0 s", run.message or "")


def test_the_task_and_the_ticker_run_the_same_job(clean_db: str) -> None:
    from broker import ticker
    from broker.queue import celery_app
    from broker.workers.tasks import console as console_tasks

    celery_app.loader.import_default_modules()
    assert "broker.workers.tasks.console" in celery_app.conf.include
    assert celery_app.tasks[jobs.VERIFY].name == console_tasks.verify_log.name
    assert celery_app.tasks[jobs.VERIFY].acks_late is True
    assert console_tasks.verify_log() == 0  # nothing queued: nothing to do
    jobs.install()
    assert ticker._jobs[jobs.VERIFY].fn is jobs.start_in_background
