"""One timed phase: receivers up, the open loop, the drain, the records gathered and summarised."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import submit_bench
from bench.submit_bench import admin_url

from . import stack as stack_mod
from .traffic import Planned, receiver_main, submitter_main

CTX = mp.get_context("fork")  # children inherit the pre-built requests without pickling them


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def box_cpu() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / tick, total / tick


def proc_stats(pid: int) -> dict[str, float] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return {"rss_mib": round(rss, 1), "fds": fds, "threads": threads}


class Sampler(threading.Thread):
    """Every `interval` s: RSS, open files and threads of each broker process; CPU by side."""

    def __init__(self, stack: stack_mod.Stack, interval: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval, self.t0 = stack, interval, t0
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        pids = self.stack.pids()
        row: dict[str, Any] = {"t": round(time.time() - self.t0, 1), "load": os.getloadavg()[0]}
        for role, plist in pids.items():
            for i, pid in enumerate(plist):
                st = proc_stats(pid)
                if st is not None:
                    row[f"{role}{i}"] = st
        row["box_busy_s"], _ = box_cpu()
        self.samples.append(row)

    def run(self) -> None:
        self.sample()
        while not self.halt.wait(self.interval):
            self.sample()
        self.sample()


class CpuMeter:
    """CPU seconds by side over a phase: broker processes, its PostgreSQL backends, Redis, box."""

    def __init__(self, stack: stack_mod.Stack) -> None:
        self.stack = stack
        self.start: dict[str, dict[int, float]] = {}
        self.box0 = box_cpu()
        self.t0 = time.time()

    def _groups(self) -> dict[str, list[int]]:
        pids = self.stack.pids()
        return {
            "api": pids.get("api", []),
            "celery_worker": pids.get("worker", []) + pids.get("worker-log", []),
            "celery_beat": pids.get("beat", []),
            "postgres_backends": stack_mod.pg_backend_pids(self.stack.db),
            "redis_server": stack_mod.redis_pids(),
        }

    def begin(self) -> None:
        self.start = {k: cpu_of(v) for k, v in self._groups().items()}
        self.box0 = box_cpu()
        self.t0 = time.time()

    def end(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, pids in self._groups().items():
            now = cpu_of(pids)
            before = self.start.get(k, {})
            # Processes present at both ends (a PostgreSQL backend that closed is not counted).
            out[k] = round(sum(v - before.get(p, 0.0) for p, v in now.items()), 2)
        busy1, _ = box_cpu()
        out["box_busy"] = round(busy1 - self.box0[0], 2)
        out["wall"] = round(time.time() - self.t0, 2)
        return out


def pending_deliveries(db: str, since_epoch: float) -> int:
    """Deliveries created since `since_epoch` not yet acknowledged (uses ix_deliveries_queued)."""
    import psycopg

    with psycopg.connect(admin_url(db), autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from deliveries where state in ('queued', 'available', 'fetched')"
            " and created_at >= to_timestamp(%s) at time zone 'UTC'",
            (since_epoch,),
        ).fetchone()
    return int(row[0]) if row else -1


class Receivers:
    """The recipient processes, restarted per phase from the cursors they left (no re-reads)."""

    def __init__(self, actors: stack_mod.Actors, port: int, n: int, wait: float, share: float):
        self.actors, self.port, self.n, self.wait, self.share = actors, port, n, wait, share
        self.procs: list[Any] = []
        self.stop_event: Any = None
        self.paths: list[str] = []
        senders = sorted(actors.world.senders)
        self.cursors: dict[str, str | None] = dict.fromkeys(actors.recipients)
        self.acks: dict[tuple[str, str], bytes] = {}
        self.shas: dict[str, str] = {}
        self.senders_sig = {fp.split("/")[0]: submit_bench.signing_key(fp).public for fp in senders}

    def start(self, planned: Planned) -> None:
        # Items of an earlier phase that were not drained are acknowledged in this one.
        self.acks.update(planned.acks)
        self.shas.update(planned.envelope_sha)
        self.stop_event = CTX.Event()
        agencies = sorted(self.actors.recipients)
        groups = [agencies[i :: self.n] for i in range(self.n)]
        self.procs, self.paths = [], []
        for i, group in enumerate(groups):
            path = tempfile.mktemp(prefix=f"load-recv{i}-", suffix=".pickle")
            proc = CTX.Process(
                target=receiver_main,
                args=(
                    self.port,
                    {a: (self.actors.recipients[a], self.cursors[a]) for a in group},
                    self.senders_sig,
                    self.acks,
                    self.shas,
                    self.wait,
                    self.share,
                    self.stop_event,
                    path,
                ),
                daemon=True,
            )
            proc.start()
            self.procs.append(proc)
            self.paths.append(path)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def stop(self) -> list[dict[str, Any]]:
        self.stop_event.set()
        out = []
        for proc, path in zip(self.procs, self.paths, strict=True):
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                out.append(
                    {"problems": ["receiver did not stop"], "seen": [], "polls": [], "acks": []}
                )
                continue
            with open(path, "rb") as f:
                result = pickle.load(f)
            os.unlink(path)
            self.cursors.update(result["cursors"])
            out.append(result)
        return out


def run_phase(
    name: str,
    stack: stack_mod.Stack,
    actors: stack_mod.Actors,
    planned: Planned,
    receivers: Receivers,
    *,
    max_conns: int,
    audit_rate: float,
    sample_s: float,
    drain_timeout: float,
) -> dict[str, Any]:
    """Run one phase to its drain; return the raw records and the resource samples."""
    receivers.start(planned)
    time.sleep(1.0)  # long-polls waiting
    cpu = CpuMeter(stack)
    t0 = time.time() + 0.5
    sampler = Sampler(stack, sample_s, t0)
    sampler.start()
    cpu.begin()
    sub_path = tempfile.mktemp(prefix="load-submit-", suffix=".pickle")
    submitter = CTX.Process(
        target=submitter_main,
        args=(
            stack.port,
            planned.offsets,
            planned.requests,
            t0,
            max_conns,
            actors.auditor,
            audit_rate,
            sub_path,
        ),
        daemon=True,
    )
    submitter.start()
    offered_end = t0 + (planned.offsets[-1] if planned.offsets else 0.0)
    submitter.join()
    if submitter.exitcode != 0:
        raise RuntimeError(f"submitter failed with exit code {submitter.exitcode}")
    with open(sub_path, "rb") as f:
        sub = pickle.load(f)
    os.unlink(sub_path)
    # Drain: every delivery made in this phase acknowledged, or the timeout.
    deadline = time.time() + drain_timeout
    drained_at = None
    while time.time() < deadline:
        if pending_deliveries(stack.db, t0) == 0:
            drained_at = time.time()
            break
        time.sleep(0.25)
    client_cpu_parent = sum(os.times()[:2])
    recv = receivers.stop()
    sampler.halt.set()
    sampler.join()
    used = cpu.end()
    used["clients_submitter_auditor"] = round(sub["cpu_s"], 2)
    used["clients_receivers"] = round(sum(r.get("cpu_s", 0.0) for r in recv), 2)
    used["clients_receivers_opening"] = round(sum(r.get("open_cpu_s", 0.0) for r in recv), 2)
    used["clients_parent"] = round(sum(os.times()[:2]) - client_cpu_parent, 2)
    return {
        "name": name,
        "t0": t0,
        "offered_end": offered_end,
        "answered_done": sub["answered_done"],
        "drained_at": drained_at,
        "planned": planned,
        "submit": sub,
        "receivers": recv,
        "samples": sampler.samples,
        "cpu": used,
        "stack_alive": stack.alive(),
    }


def seen_counts(phases: Sequence[dict[str, Any]]) -> Counter[tuple[str, str]]:
    c: Counter[tuple[str, str]] = Counter()
    for ph in phases:
        for r in ph["receivers"]:
            for agency, mid, *_ in r["seen"]:
                c[(agency, mid)] += 1
    return c
