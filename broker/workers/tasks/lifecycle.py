"""Lifecycle tasks: thin wrappers that call the lifecycle services (no arguments, idempotent)."""

from __future__ import annotations

from broker import jobs
from broker.lifecycle import jobs as lifecycle_jobs
from broker.queue import celery_app


@celery_app.task(name=jobs.PURGE, acks_late=True, ignore_result=True)
def purge_expired_retention() -> int:
    """Purge messages past retention; each batch one transaction, SKIP LOCKED, so a killed run
    leaves no message half purged and the next run finishes the work."""
    return lifecycle_jobs.purge()
