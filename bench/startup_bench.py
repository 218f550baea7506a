"""Command start-up benchmark (issue 16): each command N times in fresh processes, beside the
same commands run from a baseline commit's tree in the same sitting.

Run: .venv/bin/python bench/startup_bench.py [--runs 10] [--baseline-ref HEAD] [--no-baseline]

Commands: `broker --help`, `broker send --help`, and `broker send --dry-run` of the
focal-point guide's alert (docs/focal-points.md, step 3). A dry run validates the body, reads
the directory, signs and encrypts and asks the broker, so the benchmark first starts `broker demo`
on a free port in a temporary folder (its world, tokens and registered keystore) and stops it at
the end; the dry run's figure includes those round trips to a local broker.

The baseline is `git archive <ref>` unpacked in the temporary folder (the repository and its
worktrees are left alone). Both trees run with this interpreter and its packages as
`python -m broker.cli ...` from their own root, so each imports its own code; the `broker` script
runs the same `app`. Runs alternate between the trees, so a busy spell of a shared machine falls
on both; each tree runs every command once first, unmeasured (bytecode compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BODY = "broker/fixtures/bodies/ivory-shipment.json"
FOCAL_POINT = "VN-GDC/fp-hcm-01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without BROKER_ settings, PYTHONPATH or a bytecode setting, plus `extra`.

    With PYTHONDONTWRITEBYTECODE every run would compile what changed since the last cached
    bytecode; the benchmark gives each sitting its own PYTHONPYCACHEPREFIX instead."""
    dropped = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") and k not in dropped}
    return env | {"BROKER_LOG_LEVEL": "WARNING", **extra}


def start_demo(folder: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`broker demo` serving in the background; its credentials once the scenario has run."""
    port = free_port()
    log = (folder / "demo.log").open("wb")
    command = ["demo", "--data-dir", str(folder / "demo"), "--port", str(port)]
    demo = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", *command],
        cwd=ROOT,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    credentials = folder / "demo" / "demo-credentials.json"
    deadline = time.monotonic() + 180
    while not credentials.exists():
        if demo.poll() is not None or time.monotonic() > deadline:
            demo.kill()
            raise SystemExit(f"broker demo did not come up: see {folder / 'demo.log'}")
        time.sleep(0.5)
    time.sleep(1)  # the file is written whole, then the server keeps serving
    return demo, json.loads(credentials.read_text())


def baseline_tree(ref: str, folder: Path) -> Path:
    tree = folder / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def commands(credentials: dict[str, Any]) -> dict[str, list[str]]:
    token = credentials["tokens"]["vn-gdc-hcm"]["token"]
    dry_run = ["send", str(ROOT / BODY), "--from", FOCAL_POINT, "--to", "HK-CED"]
    dry_run += ["--agreement", "VN-HK-CMAA-2013", "--offence", "cites_wildlife", "--dry-run"]
    dry_run += ["--url", credentials["base_url"], "--token", token]
    dry_run += ["--keystore", credentials["keystore"]["folder"]]
    return {
        "broker --help": ["--help"],
        "broker send --help": ["send", "--help"],
        "broker send --dry-run": dry_run,
    }


def run_once(tree: Path, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[:2])} failed in {tree} (exit {result.returncode}):\n"
            + result.stderr.decode(errors="replace")[-2000:]
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs per command and tree")
    parser.add_argument("--baseline-ref", default="HEAD", help="commit to compare with")
    parser.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        folder = Path(tmp)
        trees = {"current": ROOT}
        if not args.no_baseline:
            trees[f"baseline {args.baseline_ref}"] = baseline_tree(args.baseline_ref, folder)
        demo, credentials = start_demo(folder)
        try:
            env = clean_env(
                BROKER_KEY_PASSPHRASE=credentials["keystore"]["passphrase"],
                PYTHONPYCACHEPREFIX=str(folder / "pycache"),
            )
            load_before = os.getloadavg()
            times: dict[str, dict[str, list[float]]] = {}
            for name, command in commands(credentials).items():
                times[name] = {tree: [] for tree in trees}
                for tree in trees.values():
                    run_once(tree, command, env)
                for _ in range(args.runs):
                    for label, tree in trees.items():
                        times[name][label].append(run_once(tree, command, env))
            load_after = os.getloadavg()
        finally:
            demo.terminate()
            demo.wait(timeout=30)

    print(f"{args.runs} runs per command and tree, fresh processes, wall clock (s)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    labels = list(trees)
    columns = [f"{label} {stat} (s)" for label in labels for stat in ("median", "max")]
    if len(labels) > 1:
        columns.append("current / baseline (medians)")
    print("| command | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    summary: dict[str, Any] = {}
    for name, per_tree in times.items():
        cells, summary[name] = [], {}
        for label in labels:
            median, worst = statistics.median(per_tree[label]), max(per_tree[label])
            summary[name][label] = {"median": median, "max": worst, "runs": per_tree[label]}
            cells += [f"{median:.2f}", f"{worst:.2f}"]
        if len(labels) > 1:
            ratio = summary[name]["current"]["median"] / summary[name][labels[1]]["median"]
            summary[name]["ratio"] = ratio
            cells.append(f"{ratio:.2f}")
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"startup-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "baseline_ref": None if args.no_baseline else args.baseline_ref,
                "load_before": load_before,
                "load_after": load_after,
                "commands": summary,
            },
            indent=2,
        )
    )
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
