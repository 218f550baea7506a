"""The production stack for fault drills, reached over HTTP: uvicorn APIs, Celery, and a client.

Builds on `tests/inbox/stack.py` (Celery processes in their own process groups, bounded waits,
server restarts) and adds what these drills need on top:

- `Api`: a uvicorn process serving `broker.main:create_app` in the production profile (optionally
  armed with crash points, or with its clock shifted), which can be killed -9 and restarted on
  the same port;
- `DrillStack`: workers from `tests.drills.celery_drill` (a visibility timeout the drill sets),
  optionally with a shifted clock, and one crash-once folder per drill (`BROKER_CRASH_ONCE_DIR`);
- `Sender`: a client that submits through whichever API answers and keeps a Jepsen-style history
  (research 4.6): each attempt is ok, refused (a recorded refusal) or unknown (no answer, or a
  5xx), and an unanswered submission is sent again, same envelope and mid, as a real client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from broker.crypto.keys import sha256_b64u
from broker.invariants.service import History
from broker.workers.celery_app import WORKER_ARGS
from tests.conftest import free_port
from tests.inbox.stack import ROOT, Proc, Stack, wait_until
from tests.messages.conftest import Exchange

PYTHON = str(ROOT / ".venv" / "bin" / "python")
CELERY = str(ROOT / ".venv" / "bin" / "celery")
DRILL_APP = "tests.drills.celery_drill"


@dataclass
class Api:
    """One uvicorn process (production profile) on a fixed port."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Api:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: self.healthy() or not self.alive(), timeout, f"API {self.name}")
        assert self.alive(), self.text()[-3000:]
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill9(self) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


@dataclass
class DrillStack(Stack):
    """Stack, plus APIs, drill workers and a crash-once folder per drill."""

    apis: list[Api] = field(default_factory=list)
    once_dir: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        if self.once_dir is not None:
            env["BROKER_CRASH_ONCE_DIR"] = str(self.once_dir)
        env.setdefault("DRILL_VISIBILITY_S", "300")
        return env

    def new_drill(self, name: str) -> Path:
        """A fresh crash-once folder: points armed from now on fire once more."""
        self.once_dir = self.data_dir / f"once-{name}-{uuid.uuid4().hex[:6]}"
        self.once_dir.mkdir()
        return self.once_dir

    def fired(self, point: str) -> int | None:
        """The pid that fired `point` in this drill (None: not yet)."""
        assert self.once_dir is not None
        mark = self.once_dir / point
        text = mark.read_text() if mark.exists() else ""
        return int(text) if text.strip() else None

    def _spawn(self, name: str, args: list[str], **extra: str) -> Proc:
        skew = extra.pop("DRILL_SKEW_S", "")
        log = self.data_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        prefix = [PYTHON, "-m", "tests.drills.skewed", skew, "celery"] if skew else [CELERY]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*prefix, "-A", DRILL_APP, *args],
                cwd=ROOT,
                env=self.env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def drill_worker(
        self,
        *,
        crash_at: str | None = None,
        visibility_s: float | None = None,
        skew_s: float = 0.0,
    ) -> Proc:
        """A prefork worker (concurrency 1), ready when this returns."""
        extra: dict[str, str] = {}
        if crash_at:
            extra["BROKER_CRASH_AT"] = crash_at
        if visibility_s is not None:
            extra["DRILL_VISIBILITY_S"] = str(visibility_s)
        if skew_s:
            extra["DRILL_SKEW_S"] = f"{skew_s:+.0f}"
        proc = self._spawn(
            "worker",
            [
                "worker",
                "--pool=prefork",
                "--concurrency=1",
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

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name == "worker" and p.alive()]

    def replace_workers(self, **kwargs: Any) -> Proc:
        """kill -9 every running worker and start one new (armed, skewed...) worker."""
        for proc in self.workers():
            proc.kill9()
        self.procs[:] = [p for p in self.procs if p.alive()]
        return self.drill_worker(**kwargs)

    def api(self, name: str, *, crash_at: str | None = None, skew_s: float = 0.0) -> Api:
        """A uvicorn API process (production profile), serving when this returns."""
        port = free_port()
        skewed = ["-m", "tests.drills.skewed", f"{skew_s:+.0f}"] if skew_s else []
        argv = [
            PYTHON,
            *skewed,
            *(["uvicorn"] if skew_s else ["-m", "uvicorn"]),
            "broker.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        env = self.env(**({"BROKER_CRASH_AT": crash_at} if crash_at else {}))
        api = Api(name, port, argv, env, self.data_dir / f"api-{name}-{port}.log")
        self.apis.append(api)
        return api.start()

    def close(self) -> None:
        for api in self.apis:
            api.kill9()
        self.apis.clear()
        super().close()


RETRY_STATUSES = {409, 429, 500, 502, 503, 504}


@dataclass
class Sender:
    """Submits through the APIs and remembers what it was told (the client's history)."""

    ex: Exchange
    apis: list[Api]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    history: History = field(default_factory=History)
    statuses: Counter[str] = field(default_factory=Counter)
    envelopes: dict[str, str] = field(default_factory=dict)
    resent: int = 0

    def send(
        self, routing: dict[str, Any] | None = None, *, via: Api | None = None, patience: float = 90
    ) -> httpx.Response:
        """Submit until the broker answers for sure (2xx, or a 4xx refusal); returns that answer."""
        routing = routing or self.ex.routing()
        envelope = self.ex.envelope(routing)
        digest = sha256_b64u(envelope.encode())
        self.envelopes[routing["mid"]] = envelope
        headers = {**self.ex.fp_headers(routing["sender_fp"]), "Idempotency-Key": routing["mid"]}
        deadline = time.monotonic() + patience
        turn = self.apis.index(via) if via in self.apis else 0
        while True:
            assert time.monotonic() < deadline, f"no API answered for {routing['mid']}"
            api = via if via is not None and via.alive() else self.apis[turn % len(self.apis)]
            turn += 1
            if not api.alive():
                time.sleep(0.05)
                continue
            try:
                answer = self.http.post(
                    f"{api.url}/v1/messages", json={"envelope": envelope}, headers=headers
                )
            except httpx.TransportError as exc:  # killed mid-request, or not listening
                self.statuses[type(exc).__name__] += 1
                self.history.unknown[digest] += 1
                self.resent += 1
                via = None  # fail over
                time.sleep(0.05)
                continue
            self.statuses[str(answer.status_code)] += 1
            code = answer.status_code
            if code in (200, 201):
                self.history.accepted.add((routing["sender"], routing["mid"]))
                return answer
            if code == 409:  # the same mid being accepted right now: a recorded refusal
                self.history.refused[digest] += 1
            elif code >= 500:  # the database away, or an error: recorded or not, unknown
                self.history.unknown[digest] += 1
            if code in RETRY_STATUSES:
                self.resent += 1
                time.sleep(float(answer.headers.get("retry-after", "0.2") or 0.2))
                continue
            self.history.refused[digest] += 1
            return answer

    def inbox(self, agency: str) -> list[tuple[int, str]]:
        """Follow the agency's cursor to the end over HTTP: (seq, mid) in inbox order (urgent
        copies served ahead of the cursor come again, in order, and count then)."""
        seen: list[tuple[int, str]] = []
        cursor = ""
        api = next(a for a in reversed(self.apis) if a.alive())
        while True:
            page = self.http.get(
                f"{api.url}/v1/inbox",
                params={"after": cursor, "limit": 100},
                headers=self.ex.agency_headers(agency),
            )
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            if not items:
                return seen
            seen += sorted((item["seq"], item["mid"]) for item in items if not item["ahead"])
            cursor = page.json()["next_cursor"]
