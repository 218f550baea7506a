"""Console tasks: the full log verification an auditor asked for (no arguments; idempotent)."""

from __future__ import annotations

from broker.console import jobs as console_jobs
from broker.queue import celery_app


@celery_app.task(name=console_jobs.VERIFY, acks_late=True, ignore_result=True)
def verify_log() -> int:
    """Run the queued full verification; a duplicate or a second worker finds nothing to do."""
    return console_jobs.verify_pending()
