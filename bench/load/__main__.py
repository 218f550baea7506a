"""`python -m bench.load MODE`: see `bench/load/__init__.py` for what each mode does."""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.submit_bench import ROOT, _cpu_model, admin_url

from . import peer, preload, report
from .run import Receivers, run_phase, seen_counts
from .stack import Stack
from .traffic import Mix, plan

RESULTS = ROOT / "bench" / "results"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    p.add_argument("mode", choices=["step", "sustained", "burst", "soak", "peer", "size"])
    g = p.add_argument_group("stack")
    g.add_argument("--db", default="broker_bench_load")
    g.add_argument("--redis-db", type=int, default=12)
    g.add_argument("--api-workers", type=int, default=2, help="uvicorn workers (compose: 2)")
    g.add_argument("--celery-concurrency", type=int, default=1, help="per worker (compose: 1)")
    g.add_argument(
        "--layout",
        choices=["split", "shared"],
        default="split",
        help="split (compose): a delivery worker and a log worker; shared: one",
    )
    g.add_argument("--longpoll-total", type=int, default=0,
                   help="BROKER_LONGPOLL_TOTAL (waiting polls per API process); 0: the product"
                   " default (64)")  # fmt: skip
    g = p.add_argument_group("traffic")
    g.add_argument("--mix", default="1:0.30,3:0.55,26:0.10,oos:0.05",
                   help="shares of submits to 1, 3, 26 recipients and out-of-scope attempts")  # fmt: skip
    g.add_argument("--receivers", type=int, default=2, help="recipient processes")
    g.add_argument("--wait", type=float, default=20.0, help="long-poll seconds")
    g.add_argument("--open-share", type=float, default=1.0, help="share of items opened")
    g.add_argument("--audit-rate", type=float, default=2.0, help="auditor pages per second")
    g.add_argument("--max-conns", type=int, default=256, help="submitter connections at most")
    g.add_argument("--warmup-seconds", type=float, default=10.0)
    g.add_argument("--drain-timeout", type=float, default=180.0)
    g.add_argument("--sample-seconds", type=float, default=10.0, help="RSS/fds/threads period")
    g = p.add_argument_group("step test")
    g.add_argument("--start", type=float, default=25.0, help="first step, submits/s")
    g.add_argument("--inc", type=float, default=25.0, help="step increment")
    g.add_argument("--max", type=float, default=800.0, help="last step at most")
    g.add_argument("--step-seconds", type=float, default=30.0)
    g.add_argument("--steps-past-knee", type=int, default=1, help="steps run after the knee")
    g.add_argument("--p99-ms", type=float, default=100.0, help="knee rule: submit p99 above")
    g.add_argument("--max-errors", type=float, default=0.001, help="knee rule: error share above")
    g = p.add_argument_group("sustained, burst, soak")
    g.add_argument("--knee", type=float, default=None,
                   help="submits/s; default: the knee of the latest step result")  # fmt: skip
    g.add_argument("--rate", type=float, default=None, help="override: offered submits/s")
    g.add_argument("--minutes", type=float, default=None,
                   help="sustained: 10 by default; soak: 30 by default")  # fmt: skip
    g.add_argument("--burst-seconds", type=float, default=60.0)
    g = p.add_argument_group("peer (medallion) and size")
    g.add_argument("--peer-seconds", type=float, default=20.0, help="per measurement")
    g.add_argument("--peer-clients", type=int, default=4, help="closed-loop connections")
    g.add_argument("--peer-objects", type=int, default=100, help="objects in the polled set")
    g.add_argument("--page", type=int, default=10, help="poll page size")
    g.add_argument("--sizes", default="1000,1000000", help="size mode: stored messages")
    g.add_argument("--size-rate", type=float, default=50.0, help="size mode: open-loop rate")
    g.add_argument("--size-seconds", type=float, default=30.0)
    g.add_argument("--label", default="")
    return p.parse_args(argv)


def latest_knee() -> float | None:
    for path in sorted(glob.glob(str(RESULTS / "load-step-*.json")), reverse=True):
        data = json.loads(Path(path).read_text())
        if data.get("knee"):
            return float(data["knee"])
    return None


def db_checks(db: str, accepted_mids: list[str], preloaded: int, t_start: float) -> dict[str, Any]:
    """Stored = accepted; every delivery acknowledged; every accepted alert's event on the log."""
    import psycopg

    out: dict[str, Any] = {}
    with psycopg.connect(admin_url(db), autocommit=True) as conn:
        (stored,) = conn.execute("select count(*) from messages").fetchone() or (0,)
        out["messages_stored"] = int(stored) - preloaded
        out["messages_accepted"] = len(accepted_mids)
        (unacked,) = conn.execute(
            "select count(*) from deliveries d join messages m on m.id = d.message_id"
            " where m.mid = any(%s::uuid[]) and d.state <> 'acknowledged'",
            (accepted_mids,),
        ).fetchone() or (0,)
        out["deliveries_not_acknowledged"] = int(unacked)
        # Where accept-to-inbox goes, from the broker's own timestamps (ms): the relay
        # (accepted -> available), the wake-up and first fetch, the partner's ack.
        row = conn.execute(
            "select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by"
            "  extract(epoch from d.available_at - m.received_at) * 1000),"
            " percentile_cont(array[0.5, 0.95, 0.99]) within group (order by"
            "  extract(epoch from d.fetched_at - d.available_at) * 1000),"
            " percentile_cont(array[0.5, 0.95, 0.99]) within group (order by"
            "  extract(epoch from d.acked_at - d.fetched_at) * 1000)"
            " from deliveries d join messages m on m.id = d.message_id"
            " where m.mid = any(%s::uuid[])",
            (accepted_mids,),
        ).fetchone()
        names = ("accepted_to_available", "available_to_fetched", "fetched_to_acked")
        out["stages_ms_p50_p95_p99"] = {
            n: [round(x, 1) for x in (v or [])] for n, v in zip(names, row or (), strict=False)
        }
        deadline = time.time() + 120
        while True:
            (unlogged,) = conn.execute(
                "select count(*) from messages m left join audit_events e on e.id = m.event_id"
                " where m.mid = any(%s::uuid[]) and e.leaf_index is null",
                (accepted_mids,),
            ).fetchone() or (0,)
            if unlogged == 0 or time.time() > deadline:
                break
            time.sleep(1)
        out["accepted_not_on_log"] = int(unlogged)
        out["log_wait_s"] = round(time.time() - t_start, 1)
    return out


def finish(
    result: dict[str, Any],
    phases: list[dict[str, Any]],
    db: str,
    preloaded: int,
    extra: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Run-level checks over every phase: no loss, no duplicate, no 5xx, all on the log."""
    expected: set[tuple[str, str]] = set()
    accepted_mids: list[str] = []
    for ph in phases:
        planned = ph["planned"]
        for i, status, _, _ in ph["submit"]["records"]:
            if planned.kinds[i] != "oos" and status == 201:
                accepted_mids.append(planned.mids[i])
                expected.update((r, planned.mids[i]) for r in planned.recipients[i])
    seen = seen_counts(phases)
    lost = expected - set(seen)
    dup = sum(c - 1 for c in seen.values() if c > 1)
    stray = {k for k in set(seen) - expected if k[1] not in extra}  # extra: closed-loop mids
    fivexx = sum(report.summarize(ph, 1.0)["http_5xx"] for ph in phases)
    problems = [p for ph in phases for r in ph["receivers"] for p in r.get("problems", [])]
    t = time.time()
    dbc = db_checks(db, accepted_mids, preloaded, t)
    checks = {
        "deliveries_expected": len(expected),
        "lost": len(lost),
        "duplicated": dup,
        "unexpected": len(stray),
        "http_5xx": fivexx,
        "receiver_problems": len(problems),
        **dbc,
    }
    checks["passed"] = (
        not lost
        and dup == 0
        and not stray
        and fivexx == 0
        and not problems
        and dbc["messages_stored"] == dbc["messages_accepted"]
        and dbc["deliveries_not_acknowledged"] == 0
        and dbc["accepted_not_on_log"] == 0
        and all(all(ph["stack_alive"].values()) for ph in phases)
    )
    result["checks"] = checks
    if lost:
        result["lost_sample"] = sorted(lost)[:10]
    if problems:
        result["problems_sample"] = problems[:10]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = datetime.now(UTC)
    mix = Mix.parse(args.mix)
    result: dict[str, Any] = {
        "mode": args.mode,
        "started": started.isoformat(timespec="seconds"),
        "label": args.label,
        "command": "python -m bench.load " + " ".join(argv or sys.argv[1:]),
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average": {"start": _load()},
    }
    print(f"load average at start: {_load()}", flush=True)
    stack = Stack(
        args.db, args.redis_db, args.api_workers, args.celery_concurrency, layout=args.layout
    )
    stack.longpoll_total = args.longpoll_total or None
    pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 2)
    phases: list[dict[str, Any]] = []
    preloaded = 0
    extra: set[str] = set()
    try:
        actors = stack.prepare()
        stack.start()
        print(f"stack up on port {stack.port}: {stack.pids()}", flush=True)
        receivers = Receivers(actors, stack.port, args.receivers, args.wait, args.open_share)

        def phase(name: str, segments: list[tuple[float, float]], seed: int) -> dict[str, Any]:
            planned = plan(pool, actors, stack.port, segments, mix, seed)
            print(
                f"[{name}] built {len(planned.requests)} submits + {len(planned.acks)} acks in"
                f" {planned.build_seconds:.1f} s; load {_load()}",
                flush=True,
            )
            ph = run_phase(
                name,
                stack,
                actors,
                planned,
                receivers,
                max_conns=args.max_conns,
                audit_rate=args.audit_rate,
                sample_s=args.sample_seconds,
                drain_timeout=args.drain_timeout,
            )
            ph["build"] = {"seconds": planned.build_seconds, "cpu_s": planned.build_cpu_s}
            phases.append(ph)
            return ph

        if args.mode == "step":
            run_step(args, result, phase)
        elif args.mode in ("sustained", "soak", "burst"):
            run_timed(args, result, phase)
        elif args.mode == "peer":
            result["peer"] = peer.side_by_side(args, stack, actors, pool)
        elif args.mode == "size":
            result["size"] = preload.by_size(args, stack, actors, pool, phase, receivers)
            extra = result["size"].pop("extra_mids", set())
            preloaded = result["size"]["preloaded_total"] + result["size"]["outside_phases"]
        if phases:
            result["client_build"] = {  # before the timed phases, in the process pool
                "seconds": round(sum(p["build"]["seconds"] for p in phases), 1),
                "cpu_s": round(sum(p["build"]["cpu_s"] for p in phases), 1),
            }
            finish(result, phases, args.db, preloaded, extra)
        else:
            result["checks"] = {"passed": result.get("peer", {}).get("passed", False)}
    finally:
        stack.stop()
        pool.shutdown()
    result["load_average"]["end"] = _load()
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"load-{args.mode}-{stamp}.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    report.print_table(result)
    print(f"\nresults: {out.relative_to(ROOT)}")
    if args.mode == "step":
        png = out.with_suffix(".png")
        err = report.plot(out, png)
        print(f"plot: {png.relative_to(ROOT)}" if err is None else f"plot failed: {err}")
    return 0 if result["checks"].get("passed") else 1


def run_step(args: argparse.Namespace, result: dict[str, Any], phase: Any) -> None:
    """Steps of `--step-seconds` from `--start` by `--inc`; the knee is the first failing step."""
    phase("warmup", [(args.start, args.warmup_seconds)], seed=0)
    steps = []
    knee = None
    past = 0
    rate = args.start
    origin = time.time()
    timeline: dict[str, list[Any]] = {"t": [], "accepted": [], "delivered": []}
    while rate <= args.max:
        ph = phase(f"step-{rate:g}", [(rate, args.step_seconds)], seed=int(rate))
        m = report.summarize(ph, args.step_seconds)
        step = {"rate": rate, "load_average": _load(), "summary": m}
        steps.append(step)
        tl = report.per_second(ph, origin)
        for k in timeline:
            timeline[k].extend(tl[k])
        failed = (m["submit_ms"]["p99"] or 0) > args.p99_ms or m["error_rate"] > args.max_errors
        print(
            f"  step {rate:g}/s: accepted {m['accepted_per_s']}/s, submit p99"
            f" {m['submit_ms']['p99']} ms, accept->inbox p99 {m['accept_to_inbox_ms']['p99']} ms,"
            f" errors {m['errors']}{'  <- past the rule' if failed else ''}",
            flush=True,
        )
        if failed and knee is None:
            knee = rate
        if knee is not None:
            past += 1
            if past > args.steps_past_knee:
                break
        rate += args.inc
    # The knee as the issue states it: the first rate whose p99 passes the limit; the highest
    # rate held is the step before it.
    result["knee"] = knee
    result["highest_rate_held"] = max(
        (s["rate"] for s in steps if s["rate"] < (knee or 1e9)), default=None
    )
    result["knee_rule"] = (
        f"first step with submit p99 > {args.p99_ms} ms or errors > {args.max_errors:.1%}"
    )
    result["steps"] = steps
    result["timeline"] = timeline
    merged = Counter()
    for s in steps:
        for k, v in (s["summary"]["cpu_s"] or {}).items():
            merged[k] += v
    result["cpu_split"] = report.cpu_split(dict(merged))


def run_timed(args: argparse.Namespace, result: dict[str, Any], phase: Any) -> None:
    knee = args.knee or latest_knee()
    if args.mode == "burst":
        if not knee:
            raise SystemExit("burst needs --knee or an earlier step result")
        rate, seconds = 3 * knee, args.burst_seconds
    else:
        minutes = args.minutes or (10.0 if args.mode == "sustained" else 30.0)
        rate = args.rate or (knee / 2 if knee else None)
        if not rate:
            raise SystemExit(f"{args.mode} needs --rate, --knee or an earlier step result")
        seconds = minutes * 60
    result.update(knee=knee, rate=rate, seconds=seconds)
    phase("warmup", [(min(rate, knee or rate) / 2, args.warmup_seconds)], seed=0)
    ph = phase(args.mode, [(rate, seconds)], seed=1)
    m = report.summarize(ph, seconds)
    result["phases"] = {args.mode: m}
    result["cpu_split"] = report.cpu_split(ph["cpu"])
    window = min(120.0, 0.2 * seconds)
    result["memory"] = report.memory_slope(ph["samples"], window)
    result["memory_window_s"] = [window, seconds]
    result["samples"] = ph["samples"]
    result["timeline"] = report.per_second(ph, ph["t0"])


if __name__ == "__main__":
    sys.exit(main())
