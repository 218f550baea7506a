"""Named crash points for fault drills (research 4.5 "deterministic crash points").

`crash_point("relay.after_seq")` does nothing unless the process was started with
`BROKER_CRASH_AT=relay.after_seq`; then it ends the process at once with `os._exit(137)`, as a
kill -9 would: no `finally`, no rollback sent, no Celery acknowledgement, no HTTP response.
`BROKER_CRASH_AT` is read once per process, so an unarmed broker pays one set lookup per point,
and it is ignored unless `BROKER_ENVIRONMENT` is `development`.

Its value is a comma-separated list of `name[@hit][:action]`:

- `@hit` fires on the hit-th pass through the point in this process (default: the first);
- `:exit` (the default) ends the process; `:stop` sends the process SIGSTOP instead, so that a
  drill can hold it frozen in the middle of its work (past the Redis visibility timeout, say)
  and let it run on with SIGCONT.

With `BROKER_CRASH_ONCE_DIR` set, each point fires once among all processes sharing that
folder: the first to reach it creates `<dir>/<name>` (atomically, holding its pid) and fires;
the others, and a restarted process, pass. A drill can then restart a crashed API or rely on a
Celery pool replacing its dead child, and the redone work runs through the point unharmed.

Points in the code (each one line in its owner's file):

- `submit.before_commit` (broker/messages/service.py): the message, deliveries, event and
  outbox row are written, the transaction is not committed (it must vanish; the client, who got
  no answer, submits again with the same mid).
- `submit.after_commit` (broker/messages/router.py): committed, no response sent yet (a retry
  with the same mid must get the original receipt: stored and delivered once).
- `relay.after_seq` (broker/inbox/service.py): the outbox relay has taken inbox numbers and
  written the available deliveries, before its commit (the next relay must redo it).
- `relay.after_commit` (broker/inbox/service.py): a relay batch committed, the task is not
  acknowledged (the redelivered task must find nothing left to do).
- `log.before_commit` (broker/audit/sequencer.py): leaves, nodes and a checkpoint are written
  for a batch, not committed (the next sequencer must assign the same indexes once).
- `log.after_commit` (broker/audit/jobs.py): a sequencer batch committed, the task is not
  acknowledged.
- `push.after_post` (broker/push/service.py): a push was POSTed, before its outcome was
  recorded (the lease expires and the attempt is retried and recorded as lost).
- `lifecycle.purge_mid_batch` (broker/lifecycle/service.py): a purge batch has emptied its
  envelopes and dropped the acknowledgements, not committed, no `msg.purged` leaf yet (the
  batch must come back whole for the next run; tests/drills/test_purge_crash.py).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

ENV = "BROKER_CRASH_AT"
ONCE_ENV = "BROKER_CRASH_ONCE_DIR"
EXIT_CODE = 137  # what a shell reports for SIGKILL
POINTS = (
    "submit.before_commit",
    "submit.after_commit",
    "relay.after_seq",
    "relay.after_commit",
    "log.before_commit",
    "log.after_commit",
    "push.after_post",
    "lifecycle.purge_mid_batch",
)


@dataclass(frozen=True)
class Arming:
    """How one armed point fires: on which hit, and whether it exits or stops the process."""

    hit: int = 1
    action: str = "exit"


_armed: dict[str, Arming] | None = None
_hits: dict[str, int] = {}


def parse(raw: str) -> dict[str, Arming]:
    """`name[@hit][:action],...` -> {name: Arming}; raises ValueError on a malformed entry."""
    out: dict[str, Arming] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        spec, _, action = item.partition(":")
        name, _, hit = spec.partition("@")
        if action not in ("", "exit", "stop") or (hit and not hit.isdigit()) or hit == "0":
            raise ValueError(f"{ENV}: bad entry {item!r} (name[@hit][:exit|stop])")
        out[name.strip()] = Arming(int(hit or 1), action or "exit")
    return out


def armings() -> dict[str, Arming]:
    """The crash points this process was started with, and how each fires (read once)."""
    global _armed
    if _armed is None:
        from broker.config import Environment, settings

        development = settings().environment is Environment.development
        _armed = parse(os.environ.get(ENV, "")) if development else {}
    return _armed


def armed() -> frozenset[str]:
    """The names of the armed crash points."""
    return frozenset(armings())


def crash_point(name: str) -> None:
    """End (or freeze) the process here, like kill -9 (or SIGSTOP), if `name` is armed."""
    arming = armings().get(name)
    if arming is None:
        return
    _hits[name] = hits = _hits.get(name, 0) + 1
    if hits != arming.hit or not _claim(name):
        return
    if arming.action == "stop":
        sys.stderr.write(f"crash point {name}: stopping pid {os.getpid()}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    sys.stderr.write(f"crash point {name}: exiting with {EXIT_CODE}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def _claim(name: str) -> bool:
    """Whether this process fires `name`: always, or first among those sharing the once-dir."""
    folder = os.environ.get(ONCE_ENV)
    if not folder:
        return True
    try:
        fd = os.open(Path(folder) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as mark:
        mark.write(str(os.getpid()))
    return True


def reset() -> None:
    """Forget the cached setting and hit counts (tests that change the environment)."""
    global _armed
    _armed = None
    _hits.clear()
