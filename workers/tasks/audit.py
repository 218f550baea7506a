"""Audit tasks: the log sequencer (ids only; idempotent, serialised by a database lock)."""

from __future__ import annotations

from broker.audit import jobs
from workers.celery_app import celery_app


@celery_app.task(name=jobs.SEQUENCE, acks_late=True, ignore_result=True)
def sequence_log() -> int:
    """Append unsequenced audit events to the log and sign checkpoints."""
    return jobs.sequence_pending()
