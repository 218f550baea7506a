"""Submission benchmark: `POST /v1/messages` on the real broker against the plumbing ceiling.

What it does, all in one run (acceptance of the "Submission and agreement scope" issue):

1. Creates its own PostgreSQL database (`--db`, dropped first), migrates it, loads the demo
   world and widens MEKONG-DRAGON by one bench-only party (US-CBP, also added to operation
   MEKONG-DRAGON-V): a routing header may not name its sender as a recipient, so a member of
   the 26-party frame can address at most 25 others; with the 27th party every member can
   address exactly 26. Registers a signing key for every member's focal point and an
   encryption key for every party (fixed seeds), and issues one focal-point token per sender.
2. Starts the real broker (`uvicorn broker.main:create_app --factory --workers 2
   --no-access-log --log-level warning`, BROKER_PROFILE=production, Redis db `--redis-db`,
   submit rate limit raised so that it counts but never refuses) and, next to it, the
   plumbing app (`bench/plumbing_app.py`: one INSERT+COMMIT per request on the same database,
   sync psycopg in the threadpool and async asyncpg; and the floor, a submit's database work
   with nothing else: the broker's own repository functions on its own tables, in an
   `AsyncSession`; and the floor plus the signature verification and the signed receipt no
   submit can skip).
3. Pre-builds the signed, encrypted envelopes (4 KB bodies; 2 or 26 recipients; senders
   spread over the members' focal points) in worker processes before each timed phase, so
   client-side crypto does not compete with the broker for the 2 cores while it is measured.
4. Per repeat: the generator's own ceiling (GET /ping), the plumbing ceiling (sync and
   async), the floor and the floor with the submit's cryptography, then for 2 and 26 recipients a closed loop at fixed concurrency (max accepted/s)
   and an open loop at half that rate, scheduled by wall clock (latency is measured from the
   scheduled send time, so a slow server cannot hide its queueing: no coordinated omission).
5. Checks that every submit answered 201 and that the number of message rows equals the
   number accepted; prints medians over the repeats and writes every per-run value to
   `bench/results/submit-<timestamp>.json`.

The load generator is raw asyncio (uvloop) with httptools and pre-encoded requests: about a
tenth of the CPU of an httpx client per request. It still shares the box with the server;
its own ceiling and CPU time are reported.

    .venv/bin/python bench/submit_bench.py [--repeats 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import platform
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httptools
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.crypto import envelope as env  # noqa: E402
from broker.crypto.keys import EncryptionKey, SigningKey  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

AGREEMENT = "MEKONG-DRAGON"
OPERATION = "MEKONG-DRAGON-V"
EXTRA = {"id": "US-CBP", "name": "U.S. Customs and Border Protection", "country": "US"}
EXTRA_FP = "US-CBP/fp-01"
BODY_BYTES = 4096


def _seed(kind: str, owner: str) -> bytes:
    return hashlib.sha256(f"submit-bench/{kind}/{owner}".encode()).digest()


def signing_key(fp: str) -> SigningKey:
    return SigningKey.from_seed(_seed("sig", fp))


def encryption_key(agency: str) -> EncryptionKey:
    return EncryptionKey.from_seed(_seed("enc", agency))


# --- setup ----------------------------------------------------------------------------------


@dataclass
class World:
    parties: list[str]  # MEKONG-DRAGON after widening: 27 agencies
    senders: dict[str, str]  # focal point -> bearer token (one per member agency)


def admin_url(db: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{db}"


def create_database(name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


# One pair per run, shared by this process and the broker processes it starts: the production
# profile refuses placeholder secrets (broker/config.py).
SECRETS = {"token_pepper": secrets.token_urlsafe(32), "key_passphrase": secrets.token_urlsafe(24)}


def configure_broker(db: str, redis_url: str, data_dir: Path) -> None:
    """Point this process's broker settings at the benchmark's database, Redis and folder."""
    from broker import config
    from broker import db as broker_db

    config.configure(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        profile="production",
        redis_url=redis_url,
        data_dir=data_dir,
        keys_dir=data_dir / "keys",
        log_level="WARNING",
        **SECRETS,
    )
    broker_db.reset_engine()


def broker_env(db: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of a broker process the benchmarks start (API, Celery worker, beat)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {
        **base,
        "BROKER_PROFILE": "production",
        "BROKER_ENVIRONMENT": "development",
        "BROKER_TOKEN_PEPPER": SECRETS["token_pepper"],
        "BROKER_KEY_PASSPHRASE": SECRETS["key_passphrase"],
        "BROKER_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        "BROKER_REDIS_URL": redis_url,
        "BROKER_DATA_DIR": str(data_dir),
        "BROKER_KEYS_DIR": str(data_dir / "keys"),
        "BROKER_LOG_LEVEL": "WARNING",
        # Counted in Redis on every request as in production, never refusing here.
        "BROKER_RATE_SUBMIT_PER_MINUTE": "10000000",
        "BROKER_RATE_DEFAULT_PER_MINUTE": "10000000",
        "PYTHONPATH": str(ROOT),
    }


def setup_broker(db: str, redis_url: str, data_dir: Path) -> World:
    """Migrate, load the world, widen the frame by one party, register keys, issue tokens."""
    from broker import db as broker_db

    configure_broker(db, redis_url, data_dir)
    from broker import keyring, migrations_check
    from broker import world as world_mod
    from broker.agencies import service as agencies
    from broker.agencies.schemas import AgencyIn, FocalPointIn
    from broker.agreements import service as agreements
    from broker.agreements.schemas import DesignationIn
    from broker.auth import service as auth
    from broker.directory import service as directory
    from broker.directory.schemas import KeyIn

    migrations_check.upgrade()
    keyring.load_or_create()
    doc = world_mod.demo_world()
    broker_db.call(world_mod.load_world, doc, actor="bench")
    frame = next(a for a in doc["agreements"] if a["id"] == AGREEMENT)
    operation = next(o for o in doc["operations"] if o["id"] == OPERATION)
    parties = sorted([*frame["parties"], EXTRA["id"]])

    async def widen(s: AsyncSession) -> None:
        await agencies.create_agency(s, AgencyIn(kind="customs", **EXTRA), actor="bench")
        await agencies.create_focal_point(
            s,
            EXTRA["id"],
            FocalPointIn(id=EXTRA_FP, name="Bench desk", role="customs focal point"),
            actor="bench",
        )
        await agreements.update_agreement(
            s, AGREEMENT, {**frame, "parties": parties}, actor="bench"
        )
        await agreements.update_operation(
            s,
            OPERATION,
            {**operation, "members": sorted([*operation["members"], EXTRA["id"]])},
            actor="bench",
        )
        await agreements.designate(
            s,
            EXTRA_FP,
            DesignationIn(agreement=AGREEMENT, valid_from=datetime(2023, 1, 1).date()),
            actor="bench",
        )

    broker_db.call(widen)
    member_fps = {}
    # Receive-only parties (RILO A/P) receive but originate nothing: never a sender here.
    mute = set(frame.get("receive_only") or ())
    for fp in doc["focal_points"]:
        agency = fp["id"].split("/")[0]
        designated = any(d["agreement"] == AGREEMENT for d in fp.get("designations", []))
        if agency in frame["parties"] and agency not in {*member_fps, *mute} and designated:
            member_fps[agency] = fp["id"]

    async def keys_and_tokens(s: AsyncSession) -> dict[str, str]:
        senders: dict[str, str] = {}
        for agency in parties:
            enc = encryption_key(agency).public.jwk
            await directory.register(s, KeyIn(agency_id=agency, jwk=enc), actor="bench")
        for agency, fp in sorted(member_fps.items()):
            sig = signing_key(fp).public.jwk
            await directory.register(
                s, KeyIn(agency_id=agency, focal_point_id=fp, jwk=sig), actor="bench"
            )
            principal = await auth.create_principal(
                s,
                name=f"bench-{fp}",
                role=auth.Role.focal_point,
                actor="bench",
                focal_point_id=fp,
            )
            _, token = await auth.issue_token(s, principal, actor="bench")
            senders[fp] = token
        return senders

    senders = broker_db.call(keys_and_tokens)
    broker_db.reset_engine()
    return World(parties=parties, senders=senders)


def create_plain_table(db: str) -> None:
    import psycopg

    with psycopg.connect(admin_url(db), autocommit=True) as conn:
        conn.execute("create table if not exists bench_plain (id bigserial primary key, body text)")


def sessions_opened(db: str) -> int:
    """PostgreSQL's count of sessions ever opened on `db` (pool churn shows here)."""
    import psycopg

    with psycopg.connect(admin_url("postgres"), autocommit=True) as conn:
        row = conn.execute(
            "select sessions from pg_stat_database where datname = %s", (db,)
        ).fetchone()
        return int(row[0]) if row else -1


def count_rows(db: str, table: str) -> int:
    import psycopg

    with psycopg.connect(admin_url(db), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


# --- envelopes (worker processes) -----------------------------------------------------------

_BODY = {
    "title": "Suspected methamphetamine in a reefer container",
    "summary": "",
    "subjects": [],
}


def _body() -> dict[str, Any]:
    """An alert body whose JSON is BODY_BYTES long."""
    body = dict(_BODY)
    pad = BODY_BYTES - len(json.dumps(body, separators=(",", ":")))
    body["summary"] = "x" * pad
    return body


def post_request(port: int, path: str, token: str, body: dict[str, Any], extra: str = "") -> bytes:
    """A pre-encoded HTTP/1.1 POST of `body` as JSON (`extra`: more header lines, CRLF-ended)."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("ascii") + payload


def _request(port: int, token: str, mid: str, envelope: str) -> bytes:
    return post_request(
        port, "/v1/messages", token, {"envelope": envelope}, f"Idempotency-Key: {mid}\r\n"
    )


def build_batch(
    args: tuple[int, str, str, list[str], int, int],
) -> list[bytes]:
    """`count` request messages from focal point `fp` to `recipients` (in a worker process)."""
    port, fp, token, recipients, iat, count = args
    from uuid_utils.compat import uuid7

    signer = signing_key(fp)
    keys = {r: encryption_key(r).public for r in recipients}
    body = _body()
    out = []
    for _ in range(count):
        mid = str(uuid7())
        routing = {
            "v": 1,
            "kind": "alert",
            "mid": mid,
            "iat": iat,
            "exp": iat + 7 * 86400,
            "sender": fp.split("/")[0],
            "sender_fp": fp,
            "recipients": recipients,
            "agreement": AGREEMENT,
            "operation": OPERATION,
            "offence": "narcotics",
            "subject_types": ["conveyance", "shipment"],
            "priority": "urgent",
            "handling": "TLP:AMBER",
        }
        out.append(_request(port, token, mid, env.build_envelope(routing, body, signer, keys)))
    return out


def build_requests(
    pool: ProcessPoolExecutor, world: World, port: int, n_recipients: int, count: int
) -> list[bytes]:
    """`count` submits spread round-robin over the senders; 2 or 26 recipients each."""
    senders = sorted(world.senders)
    iat = int(time.time()) + 60  # valid for submits from now-60 s to now+360 s
    jobs = []
    per_sender = -(-count // len(senders))
    for fp in senders:
        agency = fp.split("/")[0]
        others = [p for p in world.parties if p != agency]
        if n_recipients >= len(others):
            recipients = others
        else:  # the next members after the sender, so the fan-out is spread too
            start = world.parties.index(agency)
            ring = world.parties[start + 1 :] + world.parties[:start]
            recipients = sorted(ring[:n_recipients])
        # Several jobs per sender so both worker processes stay busy.
        for chunk in _chunks(per_sender, 4):
            jobs.append((port, fp, world.senders[fp], recipients, iat, chunk))
    batches = list(pool.map(build_batch, jobs))
    # Interleave senders, as real traffic would be.
    out: list[bytes] = []
    iters = [iter(b) for b in batches]
    while iters and len(out) < count:
        nxt = []
        for it in iters:
            item = next(it, None)
            if item is not None:
                out.append(item)
                nxt.append(it)
        iters = nxt
    return out[:count]


def _chunks(total: int, parts: int) -> Iterator[int]:
    base, extra = divmod(total, parts)
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        if size:
            yield size


# --- load generator -------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), bytes(self.body)))
        self.body = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def _connect(port: int) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    return conn


@dataclass
class Load:
    """Outcome of one timed phase."""

    sent: int
    seconds: float
    statuses: dict[int, int]
    latencies_ms: list[float] = field(repr=False)
    client_cpu_s: float
    server_cpu_s: float
    postgres_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok_per_s(self) -> float:
        return self.count(201, 200) / self.seconds

    def count(self, *codes: int) -> int:
        return sum(self.statuses.get(c, 0) for c in codes)

    def pct(self, q: float) -> float:
        values = sorted(self.latencies_ms)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q / 100 * len(values)))]

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
        d.update(
            ok_per_s=round(self.ok_per_s, 1),
            p50_ms=round(self.pct(50), 2),
            p90_ms=round(self.pct(90), 2),
            p99_ms=round(self.pct(99), 2),
            max_ms=round(max(self.latencies_ms, default=0.0), 2),
            server_cpu_ms_per_ok=round(1000 * self.server_cpu_s / max(1, self.count(201, 200)), 3),
            postgres_cpu_ms_per_ok=round(
                1000 * self.postgres_cpu_s / max(1, self.count(201, 200)), 3
            ),
            redis_cpu_ms_per_ok=round(1000 * self.redis_cpu_s / max(1, self.count(201, 200)), 3),
            client_cpu_ms_per_ok=round(1000 * self.client_cpu_s / max(1, self.count(201, 200)), 3),
        )
        return d


def _cpu_of(pids: Sequence[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_by_command(*commands: str) -> dict[str, dict[int, float]]:
    """CPU seconds of every process whose command is one of `commands` (PostgreSQL's backends,
    Redis), by command and pid: the part of the machine a request costs outside the broker."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, dict[int, float]] = {c: {} for c in commands}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, rest = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        comm = head.split("(", 1)[1]
        if comm in found:
            fields = rest.split()
            found[comm][int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # Processes started during the phase (new backends) count from zero; ended ones are lost.
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _closed(port: int, requests: Sequence[bytes], concurrency: int) -> tuple:
    conns = [await _connect(port) for _ in range(concurrency)]
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    it = iter(requests)

    async def run(conn: _Conn) -> None:
        for raw in it:
            t = time.perf_counter()
            status, body = await conn.request(raw)
            latencies.append((time.perf_counter() - t) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 300 and len(errors) < 5:
                errors.append(f"{status} {body[:300]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        assert c.transport is not None
        c.transport.close()
    return elapsed, statuses, latencies, errors


async def _open(port: int, requests: Sequence[bytes], rate: float, max_conns: int) -> tuple:
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(max_conns):
        idle.put_nowait(await _connect(port))
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    tasks = []

    async def one(raw: bytes, scheduled: float) -> None:
        conn = await idle.get()
        status, body = await conn.request(raw)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 300 and len(errors) < 5:
            errors.append(f"{status} {body[:300]!r}")
        idle.put_nowait(conn)

    t0 = time.perf_counter() + 0.05
    for i, raw in enumerate(requests):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(raw, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    while not idle.empty():
        conn = idle.get_nowait()
        assert conn.transport is not None
        conn.transport.close()
    return elapsed, statuses, latencies, errors


def drive(
    port: int,
    requests: Sequence[bytes],
    server_pids: Sequence[int],
    *,
    concurrency: int = 32,
    rate: float | None = None,
) -> Load:
    """Closed loop at `concurrency`, or open loop at `rate` per second (wall-clock schedule)."""
    cpu0, srv0 = _client_cpu(), _cpu_of(server_pids)
    others0 = _cpu_by_command("postgres", "redis-server")
    if rate is None:
        coro = _closed(port, requests, concurrency)
    else:
        coro = _open(port, requests, rate, max(64, concurrency * 2))
    # The generator's own full collections took up to 190 ms (it holds the pre-built
    # envelopes): one during a timed loop would be charged to the server as latency.
    gc.collect()
    gc.disable()
    try:
        elapsed, statuses, latencies, errors = uvloop.run(coro)
    finally:
        gc.enable()
    others = _cpu_by_command("postgres", "redis-server")
    return Load(
        sent=len(requests),
        seconds=elapsed,
        statuses=statuses,
        latencies_ms=latencies,
        client_cpu_s=_client_cpu() - cpu0,
        server_cpu_s=_cpu_of(server_pids) - srv0,
        postgres_cpu_s=_cpu_delta(others0["postgres"], others["postgres"]),
        redis_cpu_s=_cpu_delta(others0["redis-server"], others["redis-server"]),
        errors=errors,
    )


# --- servers --------------------------------------------------------------------------------


class Server:
    """A uvicorn subprocess with 2 workers; `pids` are the workers' (for CPU accounting)."""

    def __init__(self, name: str, args: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.port = name, port
        cmd = [
            str(ROOT / ".venv/bin/uvicorn"),
            *args,
            "--host=127.0.0.1",
            f"--port={port}",
            "--workers=2",
            "--no-access-log",
            "--log-level=warning",
        ]
        self.log = open(  # noqa: SIM115 - the server writes to it until `stop`
            Path(tempfile.gettempdir()) / f"bench-{name}-{os.getpid()}.log", "wb"
        )
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(raw)
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        # Both workers must be up: give the second a moment to bind.
                        time.sleep(1.0)
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s: see {self.log.name}")

    @property
    def pids(self) -> list[int]:
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in children.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plain_requests(port: int, path: str, template: Sequence[bytes], n: int) -> list[bytes]:
    """Requests to the plumbing app carrying the same JSON bodies as the submits."""
    out = []
    for i in range(n):
        raw = template[i % len(template)]
        body = raw.split(b"\r\n\r\n", 1)[1]
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


def _ping_requests(port: int, n: int) -> list[bytes]:
    return [f"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()] * n


# --- the run --------------------------------------------------------------------------------


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="broker_bench_submit")
    p.add_argument("--redis-db", type=int, default=13)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--n2", type=int, default=3000, help="closed-loop submits, 2 recipients")
    p.add_argument("--n26", type=int, default=1500, help="closed-loop submits, 26 recipients")
    p.add_argument("--n-plain", type=int, default=4000, help="requests per plumbing phase")
    p.add_argument("--open-seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--pool-size",
        type=int,
        default=0,
        help="connections per process, broker and plumbing alike (default: the broker's setting)",
    )
    p.add_argument("--profile", default="", help="py-spy the submit phases into this folder")
    p.add_argument("--label", default="", help="free text kept in the results file")
    p.add_argument("--only", choices=["all", "submit", "plumbing"], default="all")
    args = p.parse_args(argv)

    started = datetime.now(UTC)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    data_dir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    print(f"load average at start: {_loadavg()}", flush=True)
    create_database(args.db)
    world = setup_broker(args.db, redis_url, data_dir)
    create_plain_table(args.db)
    import redis

    redis.Redis.from_url(redis_url).flushdb()

    broker_port, plumb_port = _free_port(), _free_port()
    server_env = broker_env(args.db, redis_url, data_dir)
    from broker.config import settings

    pool_size = args.pool_size or settings().db_pool_size
    server_env["BROKER_DB_POOL_SIZE"] = str(pool_size)
    plumb_env = {
        **server_env,  # the floors run the broker's own database code (plumbing_app.py)
        # Its commits' wake-ups go to an idle in-process ticker: database work only.
        "BROKER_PROFILE": "embedded",
        "BENCH_PLUMB_DB": f"postgres@127.0.0.1:5432/{args.db}",
        "BENCH_POOL_SIZE": str(pool_size),
        "BENCH_MAX_OVERFLOW": str(settings().db_max_overflow),
    }
    servers: list[Server] = []  # the running one, stopped on the way out
    results: dict[str, Any] = {
        "started": started.isoformat(),
        "label": args.label,
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": _cpu_model(),
        },
        "load_average": {"start": _loadavg()},
        "db_pool": {"size": pool_size, "max_overflow": settings().db_max_overflow},
        "runs": [],
    }
    pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 2)
    try:
        for rep in range(args.repeats):
            run: dict[str, Any] = {"repeat": rep + 1, "load_average": _loadavg()}
            print(f"\n--- repeat {rep + 1}/{args.repeats}, load {_loadavg()}", flush=True)
            template = build_requests(pool, world, broker_port, 2, 64)
            if args.only in ("all", "plumbing"):
                for driver in ("sync", "async"):
                    # One server per driver, started for its phase (see plumbing_app.py).
                    plumb = Server(
                        f"plumbing-{driver}",
                        ["plumbing_app:app", "--app-dir=bench"],
                        plumb_port,
                        {**plumb_env, "BENCH_DRIVER": driver},
                    )
                    servers[:] = [plumb]
                    try:
                        plumb.wait_ready("/ping")
                        if driver == "sync":
                            run["ping"] = _phase(
                                "ping (generator ceiling)",
                                plumb,
                                _ping_requests(plumb_port, args.n_plain * 2),
                                args.concurrency,
                            )
                        # asyncpg's server also measures the floors (see plumbing_app.py).
                        names = [f"insert_{driver}"]
                        if driver == "async":
                            names += ["floor_async", "floor_crypto_async"]
                        for name in names:
                            reqs = _plain_requests(plumb_port, f"/{name}", template, args.n_plain)
                            drive(
                                plumb_port,
                                reqs[: args.warmup],
                                plumb.pids,
                                concurrency=args.concurrency,
                            )
                            run[name] = _phase(name, plumb, reqs, args.concurrency)
                    finally:
                        plumb.stop()
            if args.only in ("all", "submit"):
                # Started per repeat, after the plumbing server stopped: each holds its pool.
                broker = Server(
                    "broker", ["broker.main:create_app", "--factory"], broker_port, server_env
                )
                servers[:] = [broker]
                broker.wait_ready("/health/live")
                for n_rcpt, n in ((2, args.n2), (26, args.n26)):
                    run[f"submit{n_rcpt}"] = _submit(
                        pool, world, broker, args, n_rcpt, n, count_db=args.db
                    )
                broker.stop()
            results["runs"].append(run)
    finally:
        for server in servers:
            server.stop()
        pool.shutdown()
    results["load_average"]["end"] = _loadavg()
    results["finished"] = datetime.now(UTC).isoformat()
    results["summary"] = summarize(results["runs"])
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"submit-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"\nresults: {out.relative_to(ROOT)}")
    ok = results["summary"]["checks"]["all_201"] and results["summary"]["checks"]["rows_match"]
    return 0 if ok else 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _spy(server: Server, out_dir: str, name: str) -> list[subprocess.Popen[bytes]]:
    """py-spy on each worker for the phase (collapsed stacks; samples holding the GIL only)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    spies = []
    for i, pid in enumerate(server.pids):
        out = Path(out_dir) / f"{name}-w{i}.txt"
        cmd = [str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(pid), "--rate", "250"]
        cmd += ["--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    return spies


def _phase(name: str, server: Server, reqs: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    load = drive(server.port, reqs, server.pids, concurrency=concurrency)
    s = load.summary()
    print(
        f"{name:28} {s['ok_per_s']:8.0f}/s  p50 {s['p50_ms']:6.1f}  p99 {s['p99_ms']:6.1f} ms"
        f"  statuses {load.statuses}  client cpu {load.client_cpu_s / load.seconds:.0%}",
        flush=True,
    )
    return s


def _submit(
    pool: ProcessPoolExecutor,
    world: World,
    broker: Server,
    args: argparse.Namespace,
    n_rcpt: int,
    n: int,
    *,
    count_db: str,
) -> dict[str, Any]:
    t = time.perf_counter()
    reqs = build_requests(pool, world, broker.port, n_rcpt, n + args.warmup)
    print(f"built {len(reqs)} envelopes ({n_rcpt} recipients) in {time.perf_counter() - t:.1f} s")
    before = count_rows(count_db, "messages")
    drive(broker.port, reqs[: args.warmup], broker.pids, concurrency=args.concurrency)
    spies = _spy(broker, args.profile, f"submit{n_rcpt}") if args.profile else []
    sessions = sessions_opened(count_db)
    closed = _phase(f"submit {n_rcpt} rcpt, closed", broker, reqs[args.warmup :], args.concurrency)
    closed["db_sessions_opened"] = sessions_opened(count_db) - sessions - 1
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    rate = closed["ok_per_s"] / 2
    n_open = max(50, int(rate * args.open_seconds))
    t = time.perf_counter()
    open_reqs = build_requests(pool, world, broker.port, n_rcpt, n_open)
    print(f"built {len(open_reqs)} envelopes in {time.perf_counter() - t:.1f} s")
    load = drive(broker.port, open_reqs, broker.pids, concurrency=args.concurrency, rate=rate)
    opened = load.summary()
    print(
        f"{'submit ' + str(n_rcpt) + ' rcpt, open @' + str(round(rate)):28} "
        f"{opened['ok_per_s']:8.0f}/s  p50 {opened['p50_ms']:6.1f}  p99 {opened['p99_ms']:6.1f} ms"
        f"  statuses {load.statuses}",
        flush=True,
    )
    after = count_rows(count_db, "messages")
    accepted = args.warmup + closed["statuses"].get(201, 0) + load.statuses.get(201, 0)
    return {
        "closed": closed,
        "open": {**opened, "rate": rate},
        "rows_added": after - before,
        "accepted_201": accepted,
        "rows_match": after - before == accepted,
        "all_201": set(closed["statuses"]) == {201} and set(load.statuses) == {201},
        "envelope_request_bytes": len(reqs[0]),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(path: Callable[[dict[str, Any]], float]) -> float | None:
        values = []
        for r in runs:
            with contextlib.suppress(KeyError):
                values.append(path(r))
        return round(_median(values), 2) if values else None

    s: dict[str, Any] = {
        "ping_per_s": med(lambda r: r["ping"]["ok_per_s"]),
        "insert_sync_per_s": med(lambda r: r["insert_sync"]["ok_per_s"]),
        "insert_async_per_s": med(lambda r: r["insert_async"]["ok_per_s"]),
        "insert_sync_p50_ms": med(lambda r: r["insert_sync"]["p50_ms"]),
        "insert_async_p50_ms": med(lambda r: r["insert_async"]["p50_ms"]),
        "floor_per_s": med(lambda r: r["floor_async"]["ok_per_s"]),
        "floor_crypto_per_s": med(lambda r: r["floor_crypto_async"]["ok_per_s"]),
    }
    for n in (2, 26):
        k = f"submit{n}"
        s[f"{k}_per_s"] = med(lambda r, k=k: r[k]["closed"]["ok_per_s"])
        s[f"{k}_closed_p50_ms"] = med(lambda r, k=k: r[k]["closed"]["p50_ms"])
        s[f"{k}_closed_p99_ms"] = med(lambda r, k=k: r[k]["closed"]["p99_ms"])
        s[f"{k}_open_rate"] = med(lambda r, k=k: r[k]["open"]["rate"])
        s[f"{k}_open_p50_ms"] = med(lambda r, k=k: r[k]["open"]["p50_ms"])
        s[f"{k}_open_p99_ms"] = med(lambda r, k=k: r[k]["open"]["p99_ms"])
        s[f"{k}_server_cpu_ms"] = med(lambda r, k=k: r[k]["closed"]["server_cpu_ms_per_ok"])

    # Where a request's CPU goes, machine-wide (ms per accepted request, closed loop).
    phases = {
        "insert_sync": lambda r: r["insert_sync"],
        "insert_async": lambda r: r["insert_async"],
        "floor_async": lambda r: r["floor_async"],
        "floor_crypto": lambda r: r["floor_crypto_async"],
        "submit2": lambda r: r["submit2"]["closed"],
        "submit26": lambda r: r["submit26"]["closed"],
    }
    s["cpu_ms_per_request"] = {
        name: {
            part: med(lambda r, get=get, part=part: get(r)[f"{part}_cpu_ms_per_ok"])
            for part in ("server", "postgres", "redis", "client")
        }
        for name, get in phases.items()
    }

    # Ratios per run (same run, same load), then their median.
    def ratio(r: dict[str, Any]) -> float:
        ceiling = max(r["insert_sync"]["ok_per_s"], r["insert_async"]["ok_per_s"])
        return r["submit2"]["closed"]["ok_per_s"] / ceiling

    s["ceiling_per_s"] = med(
        lambda r: max(r["insert_sync"]["ok_per_s"], r["insert_async"]["ok_per_s"])
    )
    s["submit2_of_ceiling"] = med(ratio)
    # The submit's database work alone (and with its cryptography), as shares of the same
    # ceiling: no submit can do better.
    for key, phase in (("floor", "floor_async"), ("floor_crypto", "floor_crypto_async")):
        s[f"{key}_of_ceiling"] = med(
            lambda r, phase=phase: (
                r[phase]["ok_per_s"]
                / max(r["insert_sync"]["ok_per_s"], r["insert_async"]["ok_per_s"])
            )
        )
    s["cost26_over_cost2"] = med(
        lambda r: r["submit2"]["closed"]["ok_per_s"] / r["submit26"]["closed"]["ok_per_s"]
    )
    submits = [r[k] for r in runs for k in ("submit2", "submit26") if k in r]
    s["checks"] = {
        "all_201": all(x["all_201"] for x in submits),
        "rows_match": all(x["rows_match"] for x in submits),
        "targets": {
            "submit2_of_ceiling>=0.60": (s["submit2_of_ceiling"] or 0) >= 0.60,
            "cost26_over_cost2<=2": (s["cost26_over_cost2"] or 99) <= 2.0,
            "open_p99_2<50ms": (s["submit2_open_p99_ms"] or 999) < 50,
            "open_p99_26<50ms": (s["submit26_open_p99_ms"] or 999) < 50,
        },
    }
    return s


def print_table(results: dict[str, Any]) -> None:
    s = results["summary"]
    runs = results["runs"]

    def per_run(path: Callable[[dict[str, Any]], float]) -> str:
        vals = []
        for r in runs:
            with contextlib.suppress(KeyError):
                vals.append(f"{path(r):.0f}")
        return ", ".join(vals)

    def fmt(v: Any, spec: str = ".0f") -> str:
        return "-" if v is None else format(v, spec)

    print(f"\nmedians over {len(runs)} run(s); load average {results['load_average']}")
    print(f"{'measure':44} {'median':>10}  per run")
    rows = [
        ("generator ceiling, GET /ping (req/s)", s["ping_per_s"], lambda r: r["ping"]["ok_per_s"]),
        (
            "plumbing INSERT+COMMIT, sync psycopg (req/s)",
            s["insert_sync_per_s"],
            lambda r: r["insert_sync"]["ok_per_s"],
        ),
        (
            "plumbing INSERT+COMMIT, asyncpg (req/s)",
            s["insert_async_per_s"],
            lambda r: r["insert_async"]["ok_per_s"],
        ),
        (
            "floor: a submit's DB work only, asyncpg (req/s)",
            s["floor_per_s"],
            lambda r: r["floor_async"]["ok_per_s"],
        ),
        (
            "floor + the submit's crypto (req/s)",
            s["floor_crypto_per_s"],
            lambda r: r["floor_crypto_async"]["ok_per_s"],
        ),
        (
            "submit, 2 recipients (accepted/s)",
            s["submit2_per_s"],
            lambda r: r["submit2"]["closed"]["ok_per_s"],
        ),
        (
            "submit, 26 recipients (accepted/s)",
            s["submit26_per_s"],
            lambda r: r["submit26"]["closed"]["ok_per_s"],
        ),
    ]
    for name, value, path in rows:
        print(f"{name:44} {fmt(value):>10}  {per_run(path)}")
    for n in (2, 26):
        k = f"submit{n}"
        print(
            f"{'submit ' + str(n) + ' rcpt: closed p50 / p99 (ms)':44} "
            f"{fmt(s[k + '_closed_p50_ms'], '.1f'):>5} / {fmt(s[k + '_closed_p99_ms'], '.1f')}"
        )
        print(
            f"{'submit ' + str(n) + ' rcpt: open @ half max, p50 / p99 (ms)':44} "
            f"{fmt(s[k + '_open_p50_ms'], '.1f'):>5} / {fmt(s[k + '_open_p99_ms'], '.1f')}"
            f"   (rate {fmt(s[k + '_open_rate'])}/s)"
        )
        print(
            f"{'submit ' + str(n) + ' rcpt: broker CPU per submit (ms)':44} "
            f"{fmt(s[k + '_server_cpu_ms'], '.2f'):>10}"
        )
    print(f"\nCPU per accepted request (ms; closed loop, {os.cpu_count()} cores on the box)")
    print(f"{'phase':16} {'app':>7} {'postgres':>9} {'redis':>7} {'client':>7} {'total':>7}")
    for name, parts in s["cpu_ms_per_request"].items():
        if parts["server"] is None:
            continue
        values = [parts[k] or 0.0 for k in ("server", "postgres", "redis", "client")]
        cells = "".join(f" {v:>{w}.2f}" for v, w in zip(values, (7, 9, 7, 7), strict=True))
        print(f"{name:16}{cells} {sum(values):>7.2f}")
    print(
        f"{'2-recipient accepted/s of the ceiling':44} {fmt(s['submit2_of_ceiling'], '.0%'):>10}"
        "  (target >= 60%)"
    )
    print(
        f"{'floor (DB work of a submit) of the ceiling':44} {fmt(s['floor_of_ceiling'], '.0%'):>10}"
        "  (no submit on this schema and driver can do better)"
    )
    print(
        f"{'floor + crypto of the ceiling':44} {fmt(s['floor_crypto_of_ceiling'], '.0%'):>10}"
        "  (nor one that verifies and signs)"
    )
    print(
        f"{'26-recipient cost / 2-recipient cost':44} {fmt(s['cost26_over_cost2'], '.2f'):>10}"
        "  (target <= 2)"
    )
    print(f"checks: {json.dumps(s['checks'])}")


if __name__ == "__main__":
    sys.exit(main())
