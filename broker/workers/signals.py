"""The worker's signal handlers (imported by every worker through the app's `include`)."""

from __future__ import annotations

from typing import Any

from celery.signals import task_prerun, worker_process_init, worker_ready

from broker import jobs, runtime
from broker.queue import DELIVERY_QUEUE, SWEEP_EXPIRES_S, celery_app


@worker_ready.connect
def _sweep_on_start(sender: Any = None, **_: Any) -> None:
    """Sweep the outbox as soon as a delivery worker is up, not at the first beat tick.

    Rows left while no worker ran go out at once, and the pool process that takes the sweep
    opens its database and Redis connections then, not on the first alert after a (re)start.
    A plain publish, like the beat sweep's (the flag is for
    wake-ups only); a lost one costs nothing, the beat sweep follows.
    """
    queues = getattr(getattr(sender, "task_consumer", None), "queues", ())
    if any(queue.name == DELIVERY_QUEUE for queue in queues):
        celery_app.send_task(jobs.RELAY, expires=SWEEP_EXPIRES_S)


@worker_process_init.connect
def _freeze_heap(**_: Any) -> None:
    """A pool process is ready: its start-up heap leaves the GC's scans (`broker.runtime`)."""
    runtime.freeze_startup_heap()


@task_prerun.connect
def _clear_wake_flag(task: Any = None, **_: Any) -> None:
    """A run is starting: a commit from now on must send a new wake-up (see `broker.jobs`)."""
    if task is not None:
        jobs.started(task.name)
