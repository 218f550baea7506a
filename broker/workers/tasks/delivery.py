"""Delivery tasks: thin wrappers that call the inbox and push services (no arguments, idempotent)."""

from __future__ import annotations

from broker import jobs
from broker.inbox import jobs as inbox_jobs
from broker.push import jobs as push_jobs
from broker.queue import celery_app


@celery_app.task(name=jobs.RELAY, acks_late=True, ignore_result=True)
def relay_outbox() -> int:
    """Drain the outbox; safe to run twice or concurrently (SKIP LOCKED, state guards)."""
    return inbox_jobs.relay()


@celery_app.task(name=jobs.PUSH, acks_late=True, ignore_result=True)
def deliver_pushes() -> int:
    """POST due pushes; attempts are counted and leased in the database before each POST."""
    return push_jobs.deliver()


@celery_app.task(name=jobs.EXPIRE, acks_late=True, ignore_result=True)
def expire_deliveries() -> int:
    """Withdraw unfetched copies past their message's exp; SKIP LOCKED batches, state guards."""
    return inbox_jobs.expire()
