"""Process-level tuning shared by the API and the Celery workers."""

from __future__ import annotations

import gc

from broker.config import settings
from broker.logging import get_logger

_log = get_logger("broker.runtime")


def freeze_startup_heap() -> int:
    """Take the objects alive after start-up out of the cyclic garbage collector's scans.

    A started API process holds about 300,000 objects (modules, the application, pydantic and
    SQLAlchemy metadata), and a full collection walks all of them: a stall of every request in
    flight, which was the whole p99 of the submit benchmark's open loop (docs/performance.md,
    with the figures). After `gc.freeze()` collections walk only
    what was created since. Garbage is collected first, so only live objects are frozen; they
    are still freed by reference counting, only reference cycles among them would outlive the
    process. Returns the number of objects frozen (0 when `gc_freeze` is off).
    """
    if not settings().gc_freeze:
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    _log.info("start-up heap frozen for the garbage collector", objects=frozen)
    return frozen
