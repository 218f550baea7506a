"""Delivery benchmark: accepted -> available latency to a long-polling recipient, and inbox pages/s.

What it does, in one run (acceptance of the "Reliable delivery and inboxes" issue):

1. Creates its own PostgreSQL database (`--db`, dropped first), migrates it, loads the demo
   world, registers a signing key for VN-GDC/fp-hcm-01 and an encryption key for HK-CED (fixed
   seeds), and issues a focal-point token (sender) and an agency token (recipient).
2. Starts the real production stack: uvicorn (`broker.main:create_app`, 2 workers,
   BROKER_PROFILE=production, rate limits raised so that they never refuse), a Celery worker
   (`--pool=prefork --concurrency=2`) and beat, on Redis database `--redis-db` (flushed).
3. **Latency.** HK-CED long-polls (`GET /v1/inbox?after=<cursor>&wait=25`, one connection,
   as a partner would) while the sender submits `--messages` alerts at `--rate` per second,
   open loop (each send is scheduled by the clock). For every alert it records the broker's
   acceptance time (the receipt's `accepted_at`), the moment the long-poll returned it, and the
   database's `available_at`. Reported: accepted -> available (database: `available_at` is
   stamped by the relay just before its last statements and commit), accepted ->
   fetched (database: the long-poller's read of it, so the relay's commit, the Redis pub/sub
   wake-up and the woken poll are in), and accepted -> seen by the long-poller (plus the
   response), p50/p90/p99/max, with the stages in between. Target: p50 < 20 ms, p99 < 100 ms.
4. **Poll throughput.** Fills the inbox to `--fill` messages, follows the cursor once from the
   start (first fetches: each page also records `fetched` and a `msg.fetched` event per item),
   then runs `--concurrency` keep-alive clients for `--seconds` asking random pages of 100
   (`after` a multiple of 100). Next to it, in the same run and on the same database, the
   plumbing app (`bench/inbox_plumbing_app.py`: the same envelopes, one SELECT by primary key,
   no auth) serves the same pages; `/ping` of each server gives the load generator's ceiling.
5. Prints a table with ratios and the load average (start and end of the run: the machine is
   shared), and writes `bench/results/delivery-<timestamp>.json`.

Everything shares this machine's cores (2 here): the generator, uvicorn, Celery and PostgreSQL.

    .venv/bin/python bench/delivery_bench.py [--messages 300] [--rate 20] [--fill 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import submit_bench  # noqa: E402
from broker.crypto import envelope as env  # noqa: E402
from broker.crypto.keys import EncryptionKey, SigningKey  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

SENDER_FP = "VN-GDC/fp-hcm-01"
RECIPIENT = "HK-CED"
BODY_BYTES = 4096


def _seed(kind: str, owner: str) -> bytes:
    return hashlib.sha256(f"delivery-bench/{kind}/{owner}".encode()).digest()


SIGNER = SigningKey.from_seed(_seed("sig", SENDER_FP))
RECIPIENT_KEY = EncryptionKey.from_seed(_seed("enc", RECIPIENT))


# --- setup ----------------------------------------------------------------------------------


admin_url = submit_bench.admin_url
create_database = submit_bench.create_database


def setup_broker(db: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    """Migrate, load the world, register the two keys, issue the two tokens."""
    from broker import config
    from broker import db as broker_db

    config.configure(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        data_dir=data_dir,
        keys_dir=data_dir / "keys",
        redis_url=redis_url,
        log_level="WARNING",
        **submit_bench.SECRETS,
    )
    broker_db.reset_engine()
    from broker import keyring, migrations_check
    from broker import world as world_mod
    from broker.auth import service as auth
    from broker.directory import service as directory
    from broker.directory.schemas import KeyIn

    migrations_check.upgrade()
    keyring.load_or_create()
    broker_db.call(world_mod.load_world, world_mod.demo_world(), actor="bench")

    async def keys_and_tokens(s: AsyncSession) -> dict[str, str]:
        await directory.register(
            s, KeyIn(agency_id=RECIPIENT, jwk=RECIPIENT_KEY.public.jwk), actor="bench"
        )
        await directory.register(
            s,
            KeyIn(agency_id="VN-GDC", focal_point_id=SENDER_FP, jwk=SIGNER.public.jwk),
            actor="bench",
        )
        tokens = {}
        for name, role, binding in (
            ("sender", auth.Role.focal_point, {"focal_point_id": SENDER_FP}),
            ("recipient", auth.Role.agency, {"agency_id": RECIPIENT}),
        ):
            principal = await auth.create_principal(
                s, name=f"bench-{name}", role=role, actor="bench", **binding
            )
            _, tokens[name] = await auth.issue_token(s, principal, actor="bench")
        return tokens

    tokens = broker_db.call(keys_and_tokens)
    broker_db.reset_engine()
    return tokens


def envelopes(n: int) -> list[tuple[str, str]]:
    """(mid, envelope) pairs: signed, encrypted alerts of about 4 KB to HK-CED."""
    from uuid_utils.compat import uuid7

    out = []
    now = int(time.time())
    for i in range(n):
        mid = str(uuid7())
        routing = {
            "v": 1,
            "kind": "alert",
            "mid": mid,
            "iat": now,
            "exp": now + 7 * 86400,
            "sender": "VN-GDC",
            "sender_fp": SENDER_FP,
            "recipients": [RECIPIENT],
            "agreement": "VN-HK-CMAA-2013",
            "operation": None,
            "offence": "cites_wildlife",
            "subject_types": ["route", "shipment"],
            "priority": "urgent",
            "handling": "TLP:AMBER",
        }
        body = {
            "title": f"Bench alert {i}",
            "summary": "x" * BODY_BYTES,
            "subjects": [],
        }
        out.append(
            (mid, env.build_envelope(routing, body, SIGNER, {RECIPIENT: RECIPIENT_KEY.public}))
        )
    return out


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A subprocess in its own process group, logging to a temporary file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open for the process's life
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, check: Any, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log.name}")
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s: see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def uvicorn(name: str, app: list[str], port: int, env: dict[str, str]) -> Proc:
    cmd = [
        str(ROOT / ".venv/bin/uvicorn"),
        *app,
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=2",
        "--no-access-log",
        "--log-level=warning",
    ]
    proc = Proc(name, cmd, env)
    proc.wait_for(lambda: _get(port, "/ping" if name == "plumbing" else "/health/ready")[0] == 200)
    time.sleep(1.0)  # both workers up
    return proc


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""


# --- phase 1: latency -----------------------------------------------------------------------


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def latency_phase(
    port: int, tokens: dict[str, str], batch: list[tuple[str, str]], rate: float
) -> dict[str, Any]:
    seen: dict[str, float] = {}
    accepted: dict[str, float] = {}
    answered: dict[str, float] = {}
    stop = threading.Event()
    errors: list[str] = []

    def poller() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {tokens['recipient']}"}
        cursor = "0"
        while not stop.is_set():
            conn.request("GET", f"/v1/inbox?after={cursor}&limit=100&wait=25", headers=headers)
            response = conn.getresponse()
            body = response.read()
            at = time.time()
            if response.status != 200:
                errors.append(f"poll {response.status}: {body[:200]!r}")
                time.sleep(0.1)
                continue
            page = json.loads(body)
            for item in page["items"]:
                seen.setdefault(item["mid"], at)
            cursor = page["next_cursor"]

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    time.sleep(0.5)  # the poller is waiting
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic() + 0.2
    late = 0
    for i, (mid, envelope) in enumerate(batch):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late += 1
        conn.request(
            "POST",
            "/v1/messages",
            body=json.dumps({"envelope": envelope}),
            headers={
                "Authorization": f"Bearer {tokens['sender']}",
                "Idempotency-Key": mid,
                "Content-Type": "application/json",
            },
        )
        response = conn.getresponse()
        body = response.read()
        if response.status != 201:
            raise RuntimeError(f"submit answered {response.status}: {body[:300]!r}")
        answered[mid] = time.time()
        accepted[mid] = _parse_time(json.loads(body)["accepted_at"])
    end = time.monotonic() + 60
    while len(seen) < len(batch) and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    missing = len(batch) - len(seen)
    e2e = [(seen[m] - accepted[m]) * 1000 for m in accepted if m in seen]
    after_201 = [(seen[m] - answered[m]) * 1000 for m in answered if m in seen]
    return {
        "e2e_ms": e2e,
        "answered_to_seen_ms": after_201,
        "answered": answered,
        "seen": seen,
        "missing": missing,
        "late_sends": late,
        "poll_errors": errors[:5],
    }


def db_times(db: str, mids: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Per mid: the broker's received_at, available_at and fetched_at (epoch seconds)."""
    import psycopg

    with psycopg.connect(admin_url(db)) as conn:
        rows = conn.execute(
            """select m.mid::text, extract(epoch from m.received_at),
                      extract(epoch from d.available_at), extract(epoch from d.fetched_at)
                 from deliveries d join messages m on m.id = d.message_id
                where m.mid = any(%s::uuid[]) and d.fetched_at is not null""",
            (list(mids),),
        ).fetchall()
    return {r[0]: (float(r[1]), float(r[2]), float(r[3])) for r in rows}


def stages(lat: dict[str, Any], times: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    """Where the time goes, per message (ms, same host clock)."""
    out: dict[str, list[float]] = {k: [] for k in STAGES}
    for mid, (received, available, fetched) in times.items():
        answered, seen = lat["answered"].get(mid), lat["seen"].get(mid)
        if answered is None or seen is None:
            continue
        out["accepted_to_available"].append((available - received) * 1000)
        out["accepted_to_fetched"].append((fetched - received) * 1000)
        out["submit_processing"].append((answered - received) * 1000)
        out["answered_to_relay_start"].append((available - answered) * 1000)
        out["relay_start_to_fetch"].append((fetched - available) * 1000)
        out["fetch_to_seen"].append((seen - fetched) * 1000)
    return {k: dist(v) for k, v in out.items()}


STAGES = (
    "accepted_to_available",
    "accepted_to_fetched",
    "submit_processing",
    "answered_to_relay_start",
    "relay_start_to_fetch",
    "fetch_to_seen",
)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def dist(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


# --- phase 2-4: fill and poll throughput ----------------------------------------------------


def fill(port: int, token: str, batch: list[tuple[str, str]], threads: int = 4) -> float:
    chunks = [batch[i::threads] for i in range(threads)]
    started = time.monotonic()

    def run(chunk: list[tuple[str, str]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for mid, envelope in chunk:
            conn.request(
                "POST",
                "/v1/messages",
                body=json.dumps({"envelope": envelope}),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Idempotency-Key": mid,
                    "Content-Type": "application/json",
                },
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 201, response.status

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(batch) / (time.monotonic() - started)


def wait_available(db: str, n: int, timeout: float = 120) -> None:
    import psycopg

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with psycopg.connect(admin_url(db)) as conn:
            row = conn.execute(
                "select count(*) from deliveries where inbox_seq is not null"
            ).fetchone()
        if row and row[0] >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"fewer than {n} deliveries available after {timeout} s")


def first_drain(port: int, token: str) -> dict[str, float]:
    """Follow the cursor once from the start, as a partner catching up (first fetches)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cursor, pages, items = "0", 0, 0
    started = time.monotonic()
    while True:
        conn.request(
            "GET",
            f"/v1/inbox?after={cursor}&limit=100",
            headers={"Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        page = json.loads(response.read())
        if not page["items"]:
            break
        pages += 1
        items += len(page["items"])
        cursor = page["next_cursor"]
    elapsed = time.monotonic() - started
    return {"pages": pages, "items": items, "pages_per_s": pages / elapsed}


def copy_pages(db: str) -> int:
    import psycopg

    with psycopg.connect(admin_url(db), autocommit=True) as conn:
        conn.execute("drop table if exists bench_page")
        conn.execute("create table bench_page (id bigint primary key, body text not null)")
        conn.execute(
            """insert into bench_page (id, body)
               select d.inbox_seq, m.envelope from deliveries d join messages m on m.id = d.message_id
                where d.recipient = %s and d.inbox_seq is not null""",
            (RECIPIENT,),
        )
        conn.execute("analyze bench_page")
        row = conn.execute("select count(*) from bench_page").fetchone()
    return int(row[0]) if row else 0


def hammer(
    port: int, paths: Sequence[str], headers: dict[str, str], seconds: float, concurrency: int
) -> dict[str, Any]:
    """Closed loop: `concurrency` keep-alive clients asking random paths for `seconds`."""
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        got: list[int] = []
        while time.monotonic() < deadline:
            t = time.perf_counter()
            conn.request("GET", rng.choice(paths), headers=headers)
            response = conn.getresponse()
            body = response.read()
            mine.append((time.perf_counter() - t) * 1000)
            got.append(len(body))
            if response.status != 200:
                with lock:
                    errors.append(response.status)
        with lock:
            latencies.extend(mine)
            sizes.extend(got)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "per_s": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "mean_bytes": statistics.fmean(sizes) if sizes else 0,
        "errors": len(errors),
    }


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="broker_bench_delivery")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--messages", type=int, default=300, help="alerts timed for latency")
    parser.add_argument("--rate", type=float, default=20.0, help="alerts per second (open loop)")
    parser.add_argument("--fill", type=int, default=2000, help="inbox size for the poll phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="per poll measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="poll clients")
    parser.add_argument(
        "--layout",
        choices=["shared", "split"],
        default="shared",
        help="shared: one worker (prefork, 2 processes) for every queue, as docker-compose runs"
        " it; split: one worker process for the delivery queue, one for the rest",
    )
    args = parser.parse_args(argv)

    import redis

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    create_database(args.db)
    data_dir = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    print(f"setting up {args.db} in {data_dir} ...", flush=True)
    tokens = setup_broker(args.db, redis_url, data_dir)
    print("building envelopes ...", flush=True)
    timed = envelopes(args.messages)
    extra = envelopes(max(args.fill - args.messages, 0))

    env = submit_bench.broker_env(args.db, redis_url, data_dir)
    procs: list[Proc] = []
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_start": os.getloadavg(),
        "args": vars(args),
    }
    try:
        port = free_port()
        procs.append(uvicorn("broker", ["broker.main:create_app", "--factory"], port, env))
        celery = str(ROOT / ".venv/bin/celery")
        layouts = {
            "shared": [("worker", 2, [])],
            "split": [("delivery", 1, ["-Q", "delivery"]), ("other", 1, ["-Q", "celery"])],
        }
        for name, processes, queues in layouts[args.layout]:
            worker = Proc(
                name,
                [
                    celery, "-A", "broker.workers.celery_app", "worker", "--pool=prefork",
                    f"--concurrency={processes}", *queues, "--loglevel=INFO",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-n", f"bench-{name}-{uuid.uuid4().hex[:6]}@%h",
                ],
                env,
            )  # fmt: skip
            procs.append(worker)
            worker.wait_for(lambda w=worker: " ready." in w.text())
        beat = Proc(
            "beat",
            [celery, "-A", "broker.workers.celery_app", "beat", "--loglevel=INFO",
             "--schedule", str(data_dir / "beat-schedule")],
            env,
        )  # fmt: skip
        procs.append(beat)
        beat.wait_for(lambda: "beat: Starting" in beat.text())

        print(
            f"latency: {args.messages} alerts at {args.rate}/s, long-polling recipient ...",
            flush=True,
        )
        lat = latency_phase(port, tokens, timed, args.rate)
        times = db_times(args.db, [m for m, _ in timed])
        breakdown = stages(lat, times)
        results["latency"] = {
            "accepted_to_available_ms": breakdown["accepted_to_available"],
            "accepted_to_fetched_ms": breakdown["accepted_to_fetched"],
            "accepted_to_seen_ms": dist(lat["e2e_ms"]),
            "answered_to_seen_ms": dist(lat["answered_to_seen_ms"]),
            "stages_ms": breakdown,
            "missing": lat["missing"],
            "late_sends": lat["late_sends"],
            "poll_errors": lat["poll_errors"],
        }

        print(f"filling the inbox to {args.fill} ...", flush=True)
        results["fill_submits_per_s"] = fill(port, tokens["sender"], extra)
        wait_available(args.db, args.fill)
        print("first drain ...", flush=True)
        results["first_drain"] = first_drain(port, tokens["recipient"])

        n = copy_pages(args.db)
        plumb_port = free_port()
        base_env = {k: v for k, v in env.items() if not k.startswith("BROKER_")}
        plumb_env = {**base_env, "BENCH_PLUMB_DB": f"postgres@127.0.0.1:5432/{args.db}"}
        procs.append(uvicorn("plumbing", ["bench.inbox_plumbing_app:app"], plumb_port, plumb_env))
        afters = list(range(0, max(n - 100, 1), 100))
        auth = {"Authorization": f"Bearer {tokens['recipient']}"}
        c, secs = args.concurrency, args.seconds
        print(f"poll throughput: {c} clients x {secs} s each ...", flush=True)
        results["poll"] = {
            "ping_broker": hammer(port, ["/health/live"], {}, secs / 2, c),
            "ping_plumbing": hammer(plumb_port, ["/ping"], {}, secs / 2, c),
            "inbox_page_100": hammer(
                port, [f"/v1/inbox?after={a}&limit=100" for a in afters], auth, secs, c
            ),
            "plumbing_page_100": hammer(
                plumb_port, [f"/page?after={a}&limit=100" for a in afters], {}, secs, c
            ),
        }
    finally:
        results["load_average_end"] = os.getloadavg()
        for proc in reversed(procs):
            proc.stop()

    out = ROOT / "bench" / "results" / f"delivery-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    lat = r["latency"]
    print("\nDelivery latency (ms)              n     p50     p90     p99     max")
    rows = [
        ("accepted -> available (db)", lat["accepted_to_available_ms"]),
        ("accepted -> fetched (db)", lat["accepted_to_fetched_ms"]),
        ("accepted -> seen by long-poll", lat["accepted_to_seen_ms"]),
        ("201 answered -> seen", lat["answered_to_seen_ms"]),
        ("  stage: submit (accept..201)", lat["stages_ms"]["submit_processing"]),
        ("  stage: 201 -> relay starts", lat["stages_ms"]["answered_to_relay_start"]),
        ("  stage: relay -> fetched", lat["stages_ms"]["relay_start_to_fetch"]),
        ("  stage: fetched -> seen", lat["stages_ms"]["fetch_to_seen"]),
    ]
    for name, d in rows:
        print(
            f"  {name:<30} {d['n']:>5} {d['p50']:>7.1f} {d['p90']:>7.1f} {d['p99']:>7.1f} {d['max']:>7.1f}"
        )
    print(
        f"  targets: p50 < 20, p99 < 100; missing={lat['missing']} late_sends={lat['late_sends']}"
    )
    p = r["poll"]
    broker, plumb = p["inbox_page_100"], p["plumbing_page_100"]
    print("\nInbox pages of 100 (closed loop)   req/s  envelopes/s  p50 ms  p99 ms   KB/page")
    for name, d in (
        ("broker GET /v1/inbox", broker),
        ("plumbing GET /page (same rows)", plumb),
        ("broker GET /health/live", p["ping_broker"]),
        ("plumbing GET /ping", p["ping_plumbing"]),
    ):
        envs = d["per_s"] * 100 if "page" in name or "inbox" in name else float("nan")
        print(
            f"  {name:<32} {d['per_s']:>6.0f} {envs:>11.0f} {d['p50_ms']:>7.1f} {d['p99_ms']:>7.1f}"
            f" {d['mean_bytes'] / 1024:>8.0f}"
        )
    print(f"  broker / plumbing pages: {broker['per_s'] / plumb['per_s']:.2f}")
    print(
        f"  broker pages / broker trivial endpoint: {broker['per_s'] / p['ping_broker']['per_s']:.3f}"
    )
    start, end = r["load_average_start"], r["load_average_end"]
    print(f"\nload average (1/5/15 min): start {start}, end {end}")
    fd = r["first_drain"]
    print(
        f"\nFirst drain (records fetches): {fd['pages']} pages, {fd['pages_per_s']:.0f} pages/s;"
        f" fill rate {r['fill_submits_per_s']:.0f} submits/s"
    )


if __name__ == "__main__":
    sys.exit(main())
