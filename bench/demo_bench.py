"""`broker demo --exit` benchmark (issue 16): the whole demo N times in fresh processes and fresh
data folders, beside the same command run from a baseline commit's tree in the same sitting.

Run: .venv/bin/python bench/demo_bench.py [--runs 5] [--baseline-ref HEAD] [--no-baseline]
                                          [--first-run]

Each run is `python -m broker.cli demo --exit --data-dir <new empty folder> --port <free port>`
as a newcomer runs it (no BROKER_ settings): it migrates a new SQLite database, starts the
broker, loads the world, issues the tokens, generates and registers the keys, plays the
exchanges and the audit, writes demo-credentials.json and stops. Figures per run: the wall
time to exit, the time to the first line of output (what a user waits before seeing anything),
and the CPU time of the process (user + system, less sensitive to other load on the machine).

The baseline is `git archive <ref>` unpacked in a temporary folder (the repository and its
worktrees are left alone). Both trees run with this interpreter and its packages as
`python -m broker.cli ...` from their own root, so each imports its own code. Their bytecode
goes to one temporary PYTHONPYCACHEPREFIX, so neither depends on what __pycache__ folders the
trees happen to have; each tree runs once first, unmeasured, to compile it. Runs alternate
between the trees, so a busy spell of a shared machine falls on both.

With --first-run, each run is from a new copy of the tree's `broker` package, whose bytecode is
then compiled as on the first run after `pip install -e .` (pip compiles the installed
packages, not the project itself); the packages' bytecode stays compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from startup_bench import baseline_tree, clean_env, free_port  # run as bench/demo_bench.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MEASURES = {"wall": "wall time to exit", "first_line": "first output line", "cpu": "CPU time"}


def fresh_copy(tree: Path, folder: Path) -> Path:
    """A new copy of `tree`'s `broker` package, without bytecode."""
    copy = Path(tempfile.mkdtemp(prefix="tree-", dir=folder))
    shutil.copytree(tree / "broker", copy / "broker", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def run_once(
    tree: Path, folder: Path, env: dict[str, str], *, first_run: bool = False
) -> dict[str, float]:
    """One `broker demo --exit` in a new data folder: wall, first_line and cpu seconds."""
    if first_run:
        tree = fresh_copy(tree, folder)
    data = Path(tempfile.mkdtemp(prefix="demo-", dir=folder))
    command = ["demo", "--exit", "--data-dir", str(data), "--port", str(free_port())]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", *command],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    first_line = time.perf_counter() - started
    rest = process.stdout.read()
    code = process.wait()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0 or not (data / "demo-credentials.json").exists():
        raise SystemExit(
            f"broker demo failed in {tree} (exit {code}):\n"
            + (first + rest).decode(errors="replace")[-2000:]
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "first_line": first_line, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per tree")
    parser.add_argument("--baseline-ref", default="HEAD", help="commit to compare with")
    parser.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    parser.add_argument(
        "--first-run", action="store_true", help="each run compiles the broker's bytecode"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="demo-bench-") as tmp:
        folder = Path(tmp)
        trees = {"current": ROOT}
        if not args.no_baseline:
            trees[f"baseline {args.baseline_ref}"] = baseline_tree(args.baseline_ref, folder)
        env = clean_env(PYTHONPYCACHEPREFIX=str(folder / "pycache"))
        for tree in trees.values():
            run_once(tree, folder, env)  # compiles the tree's (and the packages') bytecode
        load_before = os.getloadavg()
        times: dict[str, dict[str, list[float]]] = {
            label: {m: [] for m in MEASURES} for label in trees
        }
        for _ in range(args.runs):
            for label, tree in trees.items():
                for measure, value in run_once(tree, folder, env, first_run=args.first_run).items():
                    times[label][measure].append(value)
        load_after = os.getloadavg()

    what = "first runs (bytecode compiled)" if args.first_run else "runs"
    print(f"`broker demo --exit`, {args.runs} {what} per tree, fresh processes and folders")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    labels = list(trees)
    columns = [f"{label} median / max (s)" for label in labels]
    if len(labels) > 1:
        columns.append("current / baseline (medians)")
    print("| measure | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    summary: dict[str, Any] = {}
    for measure, title in MEASURES.items():
        cells, summary[measure] = [], {}
        for label in labels:
            values = times[label][measure]
            median, worst = statistics.median(values), max(values)
            summary[measure][label] = {"median": median, "max": worst, "runs": values}
            cells.append(f"{median:.2f} / {worst:.2f}")
        if len(labels) > 1:
            ratio = summary[measure]["current"]["median"] / summary[measure][labels[1]]["median"]
            summary[measure]["ratio"] = ratio
            cells.append(f"{ratio:.2f}")
        print(f"| {title} | " + " | ".join(cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"demo-{'first-' if args.first_run else ''}{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "baseline_ref": None if args.no_baseline else args.baseline_ref,
                "first_run": args.first_run,
                "cpus": os.cpu_count(),
                "load_before": load_before,
                "load_after": load_after,
                "measures": summary,
            },
            indent=2,
        )
    )
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
