"""Named crash points for fault drills (research 4.5 "deterministic crash points").

`crash_point("relay.after_seq")` does nothing unless the process was started with
`BROKER_CRASH_AT=relay.after_seq` (several names may be given, comma-separated); then it ends
the process at once with `os._exit(137)`, as a kill -9 would: no `finally`, no rollback sent,
no Celery acknowledgement. The variable is read once per process, so an unarmed broker pays
one set lookup per point. It is ignored unless `BROKER_ENVIRONMENT` is `development`.

Points in the code:

- `relay.after_seq`: the outbox relay has taken inbox numbers and written the available
  deliveries, before its commit (the transaction must vanish and the next relay redo it).
- `push.after_post`: a push was POSTed, before its outcome was recorded (the lease expires and
  the attempt is retried and recorded as lost).
"""

from __future__ import annotations

import os
import sys

ENV = "BROKER_CRASH_AT"
EXIT_CODE = 137  # what a shell reports for SIGKILL

_armed: frozenset[str] | None = None


def armed() -> frozenset[str]:
    """The crash points this process was started with (read once)."""
    global _armed
    if _armed is None:
        from broker.config import Environment, settings

        raw = os.environ.get(ENV, "") if settings().environment is Environment.development else ""
        _armed = frozenset(name.strip() for name in raw.split(",") if name.strip())
    return _armed


def crash_point(name: str) -> None:
    """End the process here, like kill -9, if `name` is armed."""
    if name in armed():
        sys.stderr.write(f"crash point {name}: exiting with {EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)


def reset() -> None:
    """Forget the cached setting (tests that change the environment)."""
    global _armed
    _armed = None
