"""Run a Python module with the wall clock shifted: `python -m tests.drills.skewed +90 uvicorn ...`.

time-machine moves `time.time`, `datetime.now` and friends for the whole process (and the
Celery pool children it forks) and lets the clock tick; monotonic clocks are untouched. This
stands in for libfaketime (research 4.5), which this machine does not have.
"""

from __future__ import annotations

import runpy
import sys
import time

import time_machine


def main() -> None:
    offset, module, *args = sys.argv[1:]
    time_machine.travel(time.time() + float(offset), tick=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
