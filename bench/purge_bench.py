"""Retention purge benchmark: purging a million expired messages on PostgreSQL, and what it
costs the submits running beside it.

One run, one process, one database (`--db`, dropped first):

1. The submit benchmark's set-up (`bench/submit_bench.py`: migrated database, the demo world
   with MEKONG-DRAGON widened to 27 parties, keys, focal-point tokens) and its real broker
   (uvicorn, 2 workers, production profile). A few hundred 3-recipient alerts are submitted
   over HTTP, then moved past every retention (accepted eleven years ago): the template.
2. The load suite's bulk pre-load (`bench/load/preload.py`, `bulk_load`) copies it into
   `--messages` message rows (3 acknowledged deliveries each), accepted one second apart
   before it: all past MEKONG-DRAGON's retention. Then VACUUM ANALYZE and a CHECKPOINT, as a
   database that grew over years would be.
3. EXPLAIN of every statement of one purge batch (`broker.lifecycle.service.purge`, in a
   transaction rolled back): the plans must not scan `messages` or `deliveries` whole.
4. Baseline: signed, encrypted 2-recipient submits (submit_bench's `build_requests` and
   `drive`), open loop at `--rate` for `--seconds`, latency from the scheduled send time.
5. The purge starts in its own process (`broker.lifecycle.jobs.purge`: the Celery task's
   body, batches of 200 until one is short) and, once it has run a few seconds, the same
   open-loop submits again while it runs. Then the purge is waited for.
6. Prints the pre-load rate, the purge rate (messages/s), the submit p50/p99 without and
   during the purge and their ratio (target: p99 during within 20 % of p99 without), and
   checks that every pre-loaded message was purged, once, with its acknowledgements. Writes
   `bench/results/purge-<time>.json`.

    .venv/bin/python bench/purge_bench.py                       # 100,000 messages
    .venv/bin/python bench/purge_bench.py --messages 1000000    # the acceptance size

The purge process runs the job without Celery's hard time limit (`TASK_TIME_LIMIT_S`, 240 s):
in production a backlog longer than one task run is cut there, each committed batch kept, and
the next minute's run goes on (tests/drills/test_purge_crash.py kills one mid-batch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load.preload import bulk_load  # noqa: E402
from bench.submit_bench import (  # noqa: E402
    Server,
    World,
    _cpu_model,
    _free_port,
    _loadavg,
    admin_url,
    broker_env,
    build_requests,
    configure_broker,
    create_database,
    drive,
    setup_broker,
)

TEMPLATES = 200  # 3-recipient alerts submitted over HTTP before the pre-load
# Statements that would mean a whole-table scan at a million messages.
BAD_PLANS = ("Seq Scan on messages", "Seq Scan on deliveries")
PURGE_SNIPPET = (
    "import json, time\n"
    "from broker.lifecycle import jobs\n"
    "t = time.monotonic(); n = jobs.purge()\n"
    "print(json.dumps({'purged': n, 'seconds': time.monotonic() - t}))\n"
)


def sql(db: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(admin_url(db), autocommit=True) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def settle(db: str) -> float:
    """What years of steady traffic leave behind a bulk load: statistics the planner can use
    and no dirty buffers. Without it the baseline measured the bulk load's own checkpoints and a
    never-analysed table (first 1-million run: baseline p99 124 ms against 15 ms at 100k)."""
    started = time.monotonic()
    sql(db, "VACUUM (ANALYZE)")
    sql(db, "CHECKPOINT")
    return round(time.monotonic() - started, 1)


def templates(pool: ProcessPoolExecutor, world: World, broker: Server) -> int:
    """Submit TEMPLATES 3-recipient alerts, then make them older than every retention."""
    reqs = build_requests(pool, world, broker.port, 3, TEMPLATES)
    load = drive(broker.port, reqs, broker.pids, concurrency=8)
    assert set(load.statuses) == {201}, load.errors
    return load.count(201)


def explain_purge(db: str, redis_url: str, data_dir: Path) -> dict[str, Any]:
    """EXPLAIN each statement of one purge batch (its transaction rolled back)."""
    from sqlalchemy import event

    from broker import db as broker_db
    from broker.lifecycle import service

    configure_broker(db, redis_url, data_dir)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE")) and "EXPLAIN" not in (
            statement
        ):
            seen.append((statement, params))

    async def run(session: Any) -> dict[str, Any]:
        target = session.bind.sync_engine
        event.listen(target, "before_cursor_execute", capture)
        try:
            purged = await service.purge(session)
        finally:
            event.remove(target, "before_cursor_execute", capture)
        plans = []
        conn = await session.connection()
        for statement, params in seen:
            if "messages" not in statement and "deliveries" not in statement:
                continue
            rows = await conn.exec_driver_sql("EXPLAIN " + statement, params)
            plan = [r[0] for r in rows]
            plans.append({"statement": " ".join(statement.split())[:160], "plan": plan})
        await session.rollback()
        return {"batch": purged, "plans": plans}

    out: dict[str, Any] = broker_db.call(run)
    broker_db.reset_engine()
    out["whole_table_scans"] = [
        p["statement"]
        for p in out["plans"]
        if any(b in line for b in BAD_PLANS for line in p["plan"])
    ]
    return out


def submits(
    pool: ProcessPoolExecutor, world: World, broker: Server, rate: float, seconds: float
) -> dict[str, Any]:
    """Open-loop 2-recipient submits at `rate` for `seconds` (envelopes built first)."""
    reqs = build_requests(pool, world, broker.port, 2, max(50, int(rate * seconds)))
    load = drive(broker.port, reqs, broker.pids, concurrency=32, rate=rate)
    s = load.summary()
    return {k: s[k] for k in ("sent", "seconds", "statuses", "ok_per_s", "p50_ms", "p90_ms",
                              "p99_ms", "max_ms", "server_cpu_s", "postgres_cpu_s")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000, help="expired messages to purge")
    p.add_argument("--db", default="broker_bench_purge")
    p.add_argument("--redis-db", type=int, default=14)
    p.add_argument("--rate", type=float, default=60.0, help="open-loop submits per second")
    p.add_argument("--seconds", type=float, default=30.0, help="per submit phase")
    p.add_argument("--lead", type=float, default=3.0, help="purge seconds before phase 2")
    args = p.parse_args(argv)

    started = datetime.now(UTC)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    data_dir = Path(tempfile.mkdtemp(prefix="broker-bench-purge-"))
    print(f"load average at start: {_loadavg()}", flush=True)
    create_database(args.db)
    world = setup_broker(args.db, redis_url, data_dir)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = broker_env(args.db, redis_url, data_dir)
    results: dict[str, Any] = {
        "started": started.isoformat(),
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model()},
        "load_average": {"start": _loadavg()},
    }
    pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 2)
    broker = Server("broker", ["broker.main:create_app", "--factory"], _free_port(), env)
    purger: subprocess.Popen[str] | None = None
    try:
        broker.wait_ready("/health/live")
        results["templates"] = templates(pool, world, broker)
        sql(args.db, "update messages set received_at = received_at - interval '11 years'")
        print(f"pre-loading {args.messages} messages ...", flush=True)
        results["preload"] = bulk_load(args.db, world.parties, args.messages)
        due = sql(args.db, "select count(*) from messages where purged_at is null")[0][0]
        results["due"] = due
        print(f"pre-load: {results['preload']}; {due} messages due", flush=True)
        results["settle_s"] = settle(args.db)
        print(f"settled (VACUUM ANALYZE, CHECKPOINT) in {results['settle_s']} s", flush=True)

        results["explain"] = explain_purge(args.db, redis_url, data_dir)
        for plan in results["explain"]["plans"]:
            print(
                f"EXPLAIN {plan['statement'][:90]}\n    "
                + "\n    ".join(line[:140] for line in plan["plan"][:6])
            )

        print(f"\nbaseline: submits at {args.rate}/s for {args.seconds} s", flush=True)
        results["baseline"] = submits(pool, world, broker, args.rate, args.seconds)
        print(f"  {results['baseline']}", flush=True)

        purger = subprocess.Popen(
            [str(ROOT / ".venv/bin/python"), "-c", PURGE_SNIPPET],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(purger.stdout.read()))  # type: ignore[union-attr]
        reader.start()
        time.sleep(args.lead)
        print(f"during the purge: submits at {args.rate}/s for {args.seconds} s", flush=True)
        t_phase = time.monotonic()
        results["during"] = submits(pool, world, broker, args.rate, args.seconds)
        t_phase_end = time.monotonic()
        print(f"  {results['during']}", flush=True)
        purger.wait()
        reader.join()
        t_done = time.monotonic()
        report = json.loads(out[0].strip().splitlines()[-1])
        overlap = max(0.0, min(t_done, t_phase_end) - t_phase) / (t_phase_end - t_phase)
        results["purge"] = {
            **report,
            "per_s": round(report["purged"] / report["seconds"], 1),
            "overlap_of_phase": round(overlap, 2),
        }
    finally:
        if purger is not None and purger.poll() is None:
            purger.kill()
        broker.stop()
        pool.shutdown()

    left = sql(
        args.db,
        "select count(*) filter (where purged_at is null and received_at < now() - interval"
        " '10 years'), count(*) filter (where purged_at is not null and envelope <> ''),"
        " (select count(*) from deliveries d join messages m on m.id = d.message_id"
        "  where m.purged_at is not null and d.ack is not null)"
        " from messages",
    )[0]
    base, during = results["baseline"], results["during"]
    ratio = during["p99_ms"] / base["p99_ms"] if base["p99_ms"] else None
    results["checks"] = {
        "all_due_purged": left[0] == 0 and results["purge"]["purged"] == due,
        "purged_emptied": left[1] == 0 and left[2] == 0,
        "all_submits_201": set(base["statuses"]) == {201} and set(during["statuses"]) == {201},
        "no_whole_table_scans": not results["explain"]["whole_table_scans"],
        "p99_during_within_20pct": ratio is not None and ratio <= 1.2,
        "purge_covered_the_phase": results["purge"]["overlap_of_phase"] >= 0.99,
    }
    results["p99_ratio"] = round(ratio, 2) if ratio else None
    results["p50_ratio"] = round(during["p50_ms"] / base["p50_ms"], 2) if base["p50_ms"] else None
    results["load_average"]["end"] = _loadavg()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"purge-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")

    pre, pur = results["preload"], results["purge"]
    print(f"\npre-load: {pre['added']} messages in {pre['seconds']} s ({pre['rows_per_s']}/s)")
    print(f"purge: {pur['purged']} messages in {pur['seconds']:.1f} s = {pur['per_s']}/s"
          f" (covered {pur['overlap_of_phase']:.0%} of the submit phase)")  # fmt: skip
    print(f"submit at {args.rate}/s, p50 / p99 (ms): without {base['p50_ms']} / {base['p99_ms']},"
          f" during {during['p50_ms']} / {during['p99_ms']}; p99 ratio {results['p99_ratio']},"
          f" p50 ratio {results['p50_ratio']} (target p99 ratio <= 1.2)")  # fmt: skip
    print(f"checks: {json.dumps(results['checks'])}")
    print(f"results: {path.relative_to(ROOT)}")
    hard = ("all_due_purged", "purged_emptied", "all_submits_201", "no_whole_table_scans")
    return 0 if all(results["checks"][k] for k in hard) else 1


if __name__ == "__main__":
    sys.exit(main())
