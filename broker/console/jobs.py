"""The console's background job: full log verification (embedded ticker, or Celery in production).

A click on "verify now" with "full" adds a queued run (`service.request_full`) and wakes
`VERIFY` after the commit (`broker.jobs`): in production the Celery task
`broker.workers.tasks.console.verify_log`, in the embedded profile this module's ticker job. The
ticker runs its jobs one after the other on one thread, so its job only starts the run on a
thread of its own: a long verification never holds up the log sequencer or the outbox relay.
"""

from __future__ import annotations

import threading

from broker import db, ticker
from broker.console import service
from broker.logging import get_logger

_log = get_logger("broker.console.jobs")

VERIFY = service.VERIFY_JOB
# The ticker also looks for a run on this interval (a run left by a stopped process).
INTERVAL_S = 60.0

_lock = threading.Lock()
_thread: list[threading.Thread] = []


def verify_pending() -> int:
    """The job (Celery task, embedded thread): `run_pending` on this process's event loop."""
    return db.run(service.run_pending, db.session_scope)


def _verify_logged() -> None:
    try:
        verify_pending()
    except Exception as exc:  # the run stays `running`; a later click or poll takes it over
        _log.warning("full verification failed to run", error=type(exc).__name__)


def start_in_background() -> None:
    """The embedded ticker's job: start `verify_pending` on its thread unless one is running."""
    with _lock:
        if _thread and _thread[0].is_alive():
            return
        worker = threading.Thread(target=_verify_logged, name="broker-console-verify", daemon=True)
        _thread[:] = [worker]
        worker.start()


def install() -> None:
    """Register with the embedded ticker (woken after a click's commit; idle otherwise)."""
    ticker.register(VERIFY, INTERVAL_S, start_in_background)
