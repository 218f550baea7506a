"""The Celery worker's entry point (`celery -A broker.workers.celery_app worker`).

The application, its queues and routes are configured in `broker.queue`; its `include` names
this package's task modules and signal handlers, so a worker started either way loads them.
The broker sends tasks by name and never imports this package.
"""

from __future__ import annotations

from broker.queue import (
    DEFAULT_QUEUE,
    DELIVERY_QUEUE,
    SWEEP_EXPIRES_S,
    TASK_TIME_LIMIT_S,
    VISIBILITY_TIMEOUT_S,
    WORKER_ARGS,
    celery_app,
    make_celery,
)

__all__ = [
    "DEFAULT_QUEUE",
    "DELIVERY_QUEUE",
    "SWEEP_EXPIRES_S",
    "TASK_TIME_LIMIT_S",
    "VISIBILITY_TIMEOUT_S",
    "WORKER_ARGS",
    "celery_app",
    "make_celery",
]
