"""Audit tasks: the log sequencer (ids only; idempotent, serialised by a database lock)."""

from __future__ import annotations

from broker import jobs
from broker.audit import jobs as audit_jobs
from broker.queue import celery_app


@celery_app.task(name=jobs.SEQUENCE, acks_late=True, ignore_result=True)
def sequence_log() -> int:
    """Write due leaf-budget summaries, append unsequenced events to the log, sign checkpoints."""
    return audit_jobs.sequence_pending()
