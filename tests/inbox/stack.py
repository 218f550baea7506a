"""The real production stack for fault drills: Celery worker and beat processes, Redis, PostgreSQL.

Workers run `broker.workers.celery_app` in the production profile against the test's PostgreSQL
database and Redis database 15, in their own process groups, so a drill can kill -9 one with
all its pool children. Every wait is bounded; `Stack.close()` (in a `finally`) kills whatever
is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.config import settings
from broker.workers.celery_app import WORKER_ARGS

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(ROOT / ".venv" / "bin" / "celery")
PG_VERSION_DIR = Path("/etc/postgresql")
REDIS_START = [
    "redis-server",
    "--daemonize", "yes",
    "--bind", "127.0.0.1", "-::1",
    "--port", "6379",
    "--save", "",
    "--appendonly", "no",
    "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Proc:
    """A Celery process in its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole group (main process and pool children), like a lost machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


@dataclass
class Stack:
    database_url: str
    redis_url: str
    data_dir: Path
    keys_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        cfg = settings()
        env.update(
            BROKER_PROFILE="production",
            BROKER_TOKEN_PEPPER=cfg.token_pepper,
            BROKER_KEY_PASSPHRASE=cfg.key_passphrase,
            BROKER_ENVIRONMENT="development",
            BROKER_DATABASE_URL=self.database_url,
            BROKER_REDIS_URL=self.redis_url,
            BROKER_DATA_DIR=str(self.data_dir),
            BROKER_KEYS_DIR=str(self.keys_dir),
            BROKER_LOG_LEVEL="INFO",
            BROKER_LOG_JSON="false",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def _spawn(self, name: str, args: list[str], **extra: str) -> Proc:
        log = self.data_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [CELERY, "-A", "broker.workers.celery_app", *args],
                cwd=ROOT,
                env=self.env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(self, *, crash_at: str | None = None, concurrency: int = 1) -> Proc:
        """A prefork worker, ready to take tasks when this returns."""
        extra = {"BROKER_CRASH_AT": crash_at} if crash_at else {}
        proc = self._spawn(
            "worker",
            [
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                "--loglevel=INFO",
                *WORKER_ARGS,  # as `broker worker` runs them
                "-n",
                f"drill-{uuid.uuid4().hex[:8]}@%h",
            ],
            **extra,
        )
        wait_until(lambda: " ready." in proc.text() or not proc.alive(), 60, "the worker")
        assert proc.alive(), proc.text()[-3000:]
        return proc

    def beat(self) -> Proc:
        """Celery beat: the outbox and push sweeps and the log sequencer's tick."""
        schedule = self.data_dir / f"beat-{uuid.uuid4().hex[:6]}"
        proc = self._spawn("beat", ["beat", "--loglevel=INFO", "--schedule", str(schedule)])
        wait_until(lambda: "beat: Starting" in proc.text() or not proc.alive(), 60, "beat")
        assert proc.alive(), proc.text()[-3000:]
        return proc

    def wake(self, *names: str) -> bool:
        """Publish wake-up tasks (no arguments) as the API's publisher does.

        Like the API, a drill does not care when Redis is away (another drill may have
        stopped it): the sweep runs the job anyway. Returns whether they were sent.
        """
        from celery import Celery

        app = Celery("drill", broker=self.redis_url)
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry=False,
            broker_transport_options={"max_retries": 1},
        )
        try:
            for name in names or ("outbox.relay",):
                app.send_task(name, retry=False)
            return True
        except Exception:
            return False
        finally:
            app.close()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill9()
        self.procs.clear()


# --- servers (shared with other sessions: keep outages short, always restore) ----------------


def redis_ping(url: str = "redis://127.0.0.1:6379/15") -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_stop() -> None:
    subprocess.run(
        ["redis-cli", "shutdown", "nosave"], check=False, capture_output=True, timeout=20
    )
    wait_until(lambda: not redis_ping(), 20, "Redis to stop")


def redis_start() -> None:
    if not redis_ping():
        subprocess.run(REDIS_START, check=False, capture_output=True, timeout=20)
    wait_until(redis_ping, 30, "Redis to answer", every=0.2)


def pg_cluster() -> tuple[str, str]:
    versions = sorted(p.name for p in PG_VERSION_DIR.iterdir() if p.name.isdigit())
    return versions[-1], "main"


def pg_ready(url: str) -> bool:
    import psycopg
    from sqlalchemy.engine import make_url

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(plain, connect_timeout=2) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def pg_restart(url: str) -> None:
    """Restart the cluster (fast shutdown: every connection is cut), then wait for it."""
    version, cluster = pg_cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_until(lambda: pg_ready(url), 60, "PostgreSQL to accept connections", every=0.2)
