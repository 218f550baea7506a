"""In-process periodic jobs for the embedded profile (production uses Celery beat instead).

Each job is a plain function that runs one async service on the process's event loop for sync
callers (`db.run`); the same function backs the Celery task, so both profiles run the same code. `wake(name)` runs a job
soon instead of waiting for its interval (used after a commit that created work for it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.logging import get_logger

_log = get_logger("broker.ticker")


@dataclass
class _Job:
    name: str
    interval_s: float
    fn: Callable[[], object]
    due: float = 0.0
    woken: threading.Event = field(default_factory=threading.Event)


_jobs: dict[str, _Job] = {}
_wakeup = threading.Event()


def register(name: str, interval_s: float, fn: Callable[[], object]) -> None:
    """Run `fn` every `interval_s` seconds while the ticker runs (idempotent by name)."""
    _jobs[name] = _Job(name, interval_s, fn)


def wake(name: str) -> None:
    """Ask for `name` to run as soon as the ticker can."""
    job = _jobs.get(name)
    if job is not None:
        job.woken.set()
        _wakeup.set()


def run_due(now: float | None = None) -> None:
    """Run every job that is due or woken (one pass; errors are logged, not raised)."""
    now = time.monotonic() if now is None else now
    for job in list(_jobs.values()):
        if job.woken.is_set() or now >= job.due:
            job.woken.clear()
            job.due = now + job.interval_s
            try:
                job.fn()
            except Exception as exc:
                _log.warning("periodic job failed", job=job.name, error=type(exc).__name__)


class Ticker(threading.Thread):
    """The embedded profile's worker: runs registered jobs until stopped."""

    def __init__(self, resolution_s: float = 0.05) -> None:
        super().__init__(name="broker-ticker", daemon=True)
        self.resolution_s = resolution_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            run_due()
            _wakeup.wait(self.resolution_s)
            _wakeup.clear()

    def stop(self) -> None:
        self._stop_event.set()
        _wakeup.set()
        self.join(timeout=10)
