"""The Celery application's configuration: JSON only, late acks, ids in arguments, state in the database.

The settings follow research/reliability-security.md 4.1. Tasks carry no arguments or ids
only, never content; they are idempotent, so a duplicate (a redelivery after the visibility
timeout, celery#7918) is harmless, and a lost one (Redis flushed, kill -9 before the ack) is
made good by the beat sweeps, which re-run whatever the outbox still holds.

Wake-ups are coalesced by a flag in Redis (`broker.jobs`): at most one task per job waits in
the queue. The worker's entry point (`broker.workers.celery_app`) holds the tasks and the signals;
the broker sends tasks by name and never imports it.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from broker import jobs
from broker.config import Profile, settings

VISIBILITY_TIMEOUT_S = 300  # longer than any task; retries are scheduled in the database
# A task is killed before the visibility timeout could hand its message to a second worker.
# (No soft limit: an exception raised anywhere would look like a failure of the rows at hand.)
TASK_TIME_LIMIT_S = 240
# Periodic sweeps that no worker took in time are dropped, not piled up while workers are down.
SWEEP_EXPIRES_S = 10
# Delivery has its own queue so that it never waits behind log sequencing. Every worker
# consumes both by default; a deployment may add workers for one (`celery worker -Q delivery`).
DEFAULT_QUEUE = "celery"
DELIVERY_QUEUE = "delivery"
DELIVERY_TASKS = (jobs.RELAY, jobs.PUSH)


def make_celery() -> Celery:
    """Celery configured for at-least-once delivery with idempotent tasks."""
    cfg = settings()
    app = Celery(
        "broker",
        broker=cfg.redis_url,
        include=[
            "broker.workers.signals",
            "broker.workers.tasks.delivery",
            "broker.workers.tasks.audit",
            "broker.workers.tasks.console",
            "broker.workers.tasks.lifecycle",
        ],
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=10,
        task_time_limit=TASK_TIME_LIMIT_S,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a Redis outage delays work; it must not end workers
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_default_queue=DEFAULT_QUEUE,
        task_queues=(Queue(DEFAULT_QUEUE), Queue(DELIVERY_QUEUE)),
        task_routes={name: {"queue": DELIVERY_QUEUE} for name in DELIVERY_TASKS},
        task_always_eager=cfg.profile is Profile.embedded,
        task_eager_propagates=True,
        beat_schedule={
            # The sweep: whatever a lost wake-up, a dead worker or a Redis flush left behind.
            "outbox-sweep": {
                "task": jobs.RELAY,
                "schedule": 2.0,
                "options": {"expires": SWEEP_EXPIRES_S},
            },
            # Pushes due for a retry (their times are in the database, never in a countdown).
            "push-sweep": {
                "task": jobs.PUSH,
                "schedule": 2.0,
                "options": {"expires": SWEEP_EXPIRES_S},
            },
            # Copies whose message's exp passed before a fetch leave their inboxes.
            "inbox-expire": {
                "task": jobs.EXPIRE,
                "schedule": 10.0,
                "options": {"expires": SWEEP_EXPIRES_S},
            },
            # Messages past their agreement's retention (counted in years: a minute is on time).
            "lifecycle-purge": {
                "task": jobs.PURGE,
                "schedule": 60.0,
                "options": {"expires": SWEEP_EXPIRES_S},
            },
            # The log sequencer: commits that record events also wake it (bounded merge delay).
            "log-sequence": {"task": jobs.SEQUENCE, "schedule": 1.0},
        },
    )
    return app


# How every worker runs (`broker worker`, and the drills' workers): no gossip, mingle or
# heartbeat. The broker coordinates through PostgreSQL, not between workers, and those
# broadcast channels are what a worker trips over when Redis goes away and comes back
# (kombu#582: AttributeError in _connparams while closing gossip); no task events either.
WORKER_ARGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")

celery_app = make_celery()
