"""The production profile, started by the suite: its database, Redis db, API, Celery worker and beat.

Reuses `bench/submit_bench.py` (database creation, world loading with MEKONG-DRAGON widened to
27 parties, the senders' signing keys and tokens) and `bench/delivery_bench.py` (subprocesses in
their own process groups). Adds what the whole-system load needs: an agency token and an ack
signing key for every party (recipients), and an auditor token.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import delivery_bench, submit_bench
from bench.submit_bench import ROOT, World, admin_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

BROKER_BIN = str(ROOT / ".venv/bin/broker")


def ack_key(agency: str) -> Any:
    """The agency's signing key for acknowledgements (fixed seed)."""
    from broker.crypto.keys import SigningKey

    return SigningKey.from_seed(submit_bench._seed("ack", agency))


@dataclass
class Actors:
    world: World  # parties and senders (focal point -> token)
    recipients: dict[str, str]  # agency -> agency token
    auditor: str  # auditor token (all agencies)


def setup(db: str, redis_url: str, data_dir: Path) -> Actors:
    """Fresh database, the demo world widened to 27 parties, keys and tokens for every actor."""
    submit_bench.create_database(db)
    world = submit_bench.setup_broker(db, redis_url, data_dir)
    from broker import db as broker_db

    submit_bench.configure_broker(db, redis_url, data_dir)
    from broker.auth import service as auth
    from broker.directory import service as directory
    from broker.directory.schemas import KeyIn

    async def tokens_and_keys(s: AsyncSession) -> tuple[dict[str, str], str]:
        recipients: dict[str, str] = {}
        for agency in world.parties:
            await directory.register(
                s, KeyIn(agency_id=agency, jwk=ack_key(agency).public.jwk), actor="bench"
            )
            principal = await auth.create_principal(
                s, name=f"load-{agency}", role=auth.Role.agency, actor="bench", agency_id=agency
            )
            _, recipients[agency] = await auth.issue_token(s, principal, actor="bench")
        principal = await auth.create_principal(
            s, name="load-auditor", role=auth.Role.auditor, actor="bench"
        )
        _, auditor = await auth.issue_token(s, principal, actor="bench")
        return recipients, auditor

    recipients, auditor = broker_db.call(tokens_and_keys)
    broker_db.reset_engine()
    return Actors(world=world, recipients=recipients, auditor=auditor)


def broker_env(
    db: str, redis_url: str, data_dir: Path, longpoll_total: int | None = None
) -> dict[str, str]:
    env = submit_bench.broker_env(db, redis_url, data_dir)
    if longpoll_total:
        env["BROKER_LONGPOLL_TOTAL"] = str(longpoll_total)
    return env


def children(pid: int) -> list[int]:
    """All descendants of `pid` (from /proc)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


@dataclass
class Stack:
    """uvicorn (`broker serve --workers N`), Celery workers and `broker beat`, as compose runs them.

    `layout="split"` (compose's): `worker` consumes the delivery queue and `worker-log` the
    rest (log sequencing, sweeps), `celery_concurrency` processes each. `layout="shared"`: one
    `worker` consuming both.
    """

    db: str
    redis_db: int
    api_workers: int = 2
    celery_concurrency: int = 1
    layout: str = "split"
    port: int = 0
    longpoll_total: int | None = None  # None: the product's default
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="load-bench-")))
    procs: dict[str, delivery_bench.Proc] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:6379/{self.redis_db}"

    def prepare(self) -> Actors:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()
        return setup(self.db, self.redis_url, self.data_dir)

    def start(self) -> None:
        env = broker_env(self.db, self.redis_url, self.data_dir, self.longpoll_total)
        self.port = self.port or delivery_bench.free_port()
        api = delivery_bench.Proc(
            "api",
            [BROKER_BIN, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.api_workers)],
            env,
        )  # fmt: skip
        self.procs["api"] = api

        def ready() -> bool:
            status, _ = delivery_bench._get(self.port, "/health/ready")
            return status == 200 and len(children(api.proc.pid)) >= self.api_workers

        api.wait_for(ready)
        time.sleep(1.0)  # every worker bound
        workers = {"worker": ["--queues", "delivery"], "worker-log": ["--queues", "celery"]}
        if self.layout == "shared":
            workers = {"worker": []}
        for name, queues in workers.items():
            worker = delivery_bench.Proc(
                name,
                [BROKER_BIN, "worker", "--concurrency", str(self.celery_concurrency),
                 "--loglevel", "WARNING", *queues],
                {**env, "CELERY_HOSTNAME": f"load-{name}-{uuid.uuid4().hex[:6]}"},
            )  # fmt: skip
            self.procs[name] = worker
            worker.wait_for(
                lambda w=worker: len(children(w.proc.pid)) >= self.celery_concurrency, 90
            )
        time.sleep(2.0)  # consumers connected
        beat = delivery_bench.Proc(
            "beat",
            [BROKER_BIN, "beat", "--schedule", str(self.data_dir / "beat-schedule"),
             "--loglevel", "INFO"],
            env,
        )  # fmt: skip
        self.procs["beat"] = beat
        beat.wait_for(lambda: "beat: Starting" in beat.text(), 60)

    def pids(self) -> dict[str, list[int]]:
        """Process ids per role, the supervisors included."""
        out: dict[str, list[int]] = {}
        for name, p in self.procs.items():
            if p.proc.poll() is None:
                out[name] = [p.proc.pid, *children(p.proc.pid)]
        return out

    def alive(self) -> dict[str, bool]:
        return {name: p.proc.poll() is None for name, p in self.procs.items()}

    def stop(self) -> None:
        for name in ("beat", "worker-log", "worker", "api"):
            if name in self.procs:
                self.procs[name].stop()


def pg_backend_pids(db: str) -> list[int]:
    import psycopg

    with psycopg.connect(admin_url("postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "select pid from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
            (db,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def redis_pids() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "redis-server":
                    out.append(int(entry))
            except OSError:
                pass
    return out
