"""Traffic: pre-built envelopes and acks, the open-loop submitter, the recipients, the auditor.

Everything client-side runs in processes other than the broker's and is accounted for:

- **building** (before each timed phase, in a process pool): signed, encrypted 4 KB alerts
  (`broker.crypto.envelope.build_envelope`, the SDK's path) from the 26 member focal points of
  MEKONG-DRAGON to 1, 3 or 26 recipients, plus a share of out-of-scope attempts (an offence
  the agreement does not cover), and for every in-scope delivery the recipient's signed ack
  (`ack+jws`, as `broker.sdk.agent.InboxPuller` signs it). `iat` is each alert's scheduled
  send time (plus 100 s), so that long runs stay inside the broker's iat window;
- **submitter** (one process, uvloop + httptools, the raw connection of `submit_bench`): sends
  each pre-encoded request at its scheduled wall-clock time whatever happened to the earlier
  ones (open loop); latency counts from the scheduled time (no coordinated omission). The
  auditor runs in the same process: it pages `GET /v1/audit/events` at a fixed rate;
- **recipients** (`--receivers` processes, every party's agency account spread over them):
  each agency long-polls its inbox (`wait`), then pages with `wait=0` until it is empty,
  opens every envelope (verify outer, decrypt its entry, verify inner), checks it against
  what was sent, and posts the pre-built signed ack (up to 8 in flight per agency, while
  its next poll is already waiting: a pipelined partner).

Each process writes its records to a pickle the parent reads at the end of the phase.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import pickle
import random
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvloop

from bench import submit_bench
from bench.submit_bench import AGREEMENT, OPERATION, _Conn
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u

from .stack import Actors, ack_key

OUT_OF_SCOPE_OFFENCE = "tobacco"  # not covered by MEKONG-DRAGON (narcotics, precursors, CITES)
IAT_LEAD_S = (
    100  # iat = scheduled send time + this: inside [now-300, now+120] if built < 400 s ahead
)


@dataclass(frozen=True)
class Mix:
    """Shares of the offered submits: alerts to 1, 3, 26 recipients; out-of-scope attempts."""

    r1: float = 0.30
    r3: float = 0.55
    r26: float = 0.10
    oos: float = 0.05

    @classmethod
    def parse(cls, text: str) -> Mix:
        """`1:0.3,3:0.55,26:0.1,oos:0.05`."""
        parts = dict(p.split(":") for p in text.split(","))
        return cls(
            r1=float(parts.get("1", 0)),
            r3=float(parts.get("3", 0)),
            r26=float(parts.get("26", 0)),
            oos=float(parts.get("oos", 0)),
        )

    def kinds(self) -> tuple[list[str], list[float]]:
        return ["r1", "r3", "r26", "oos"], [self.r1, self.r3, self.r26, self.oos]


@dataclass
class Planned:
    """One phase's requests in send order, with what the checks need."""

    offsets: list[float]  # seconds after the phase start
    kinds: list[str]  # r1 | r3 | r26 | oos
    mids: list[str]
    senders: list[str]  # sender agency
    recipients: list[tuple[str, ...]]
    requests: list[bytes]
    acks: dict[tuple[str, str], bytes] = field(repr=False)  # (agency, mid) -> ack request
    envelope_sha: dict[str, str] = field(repr=False)  # mid -> envelope_sha256
    build_seconds: float = 0.0
    build_cpu_s: float = 0.0


def schedule(segments: Sequence[tuple[float, float]]) -> list[float]:
    """Send offsets for (rate per second, seconds) segments, evenly spaced in each."""
    out: list[float] = []
    start = 0.0
    for rate, seconds in segments:
        if rate > 0:
            out.extend(start + i / rate for i in range(round(rate * seconds)))
        start += seconds
    return out


def _ack_request(port: int, token: str, mid: str, jws: str) -> bytes:
    return submit_bench.post_request(port, f"/v1/inbox/{mid}/ack", token, {"ack": jws})


@functools.lru_cache(maxsize=64)
def _signer(fp: str) -> Any:
    return submit_bench.signing_key(fp)


@functools.lru_cache(maxsize=64)
def _ack_signer(agency: str) -> Any:
    return ack_key(agency)


@functools.lru_cache(maxsize=64)
def _enc_public(agency: str) -> Any:
    return submit_bench.encryption_key(agency).public


def build_job(job: tuple[Any, ...]) -> list[tuple[str, bytes, str, list[tuple[str, bytes]]]]:
    """In a worker process: (mid, submit request, envelope sha, [(recipient, ack request)])."""
    port, tokens, rcpt_tokens, specs = job
    from uuid_utils.compat import uuid7

    body = submit_bench._body()
    out = []
    for fp, recipients, in_scope, iat in specs:
        mid = str(uuid7())
        routing = {
            "v": 1,
            "kind": "alert",
            "mid": mid,
            "iat": iat,
            "exp": iat + 7 * 86400,
            "sender": fp.split("/")[0],
            "sender_fp": fp,
            "recipients": list(recipients),
            "agreement": AGREEMENT,
            "operation": OPERATION,
            "offence": "narcotics" if in_scope else OUT_OF_SCOPE_OFFENCE,
            "subject_types": ["conveyance", "shipment"],
            "priority": "urgent",
            "handling": "TLP:AMBER",
        }
        keys = {r: _enc_public(r) for r in recipients}
        envelope = env.build_envelope(routing, body, _signer(fp), keys)
        digest = sha256_b64u(envelope.encode("utf-8"))
        acks = []
        if in_scope:
            for r in recipients:
                payload = {
                    "v": 1,
                    "mid": mid,
                    "envelope_sha256": digest,
                    "status": "decrypted",
                    "at": (iat - IAT_LEAD_S + 1) * 1000,
                }
                jws = env.sign_compact(payload, _ack_signer(r), env.TYP_ACK)
                acks.append((r, _ack_request(port, rcpt_tokens[r], mid, jws)))
        out.append((mid, submit_bench._request(port, tokens[fp], mid, envelope), digest, acks))
    return out


def plan(
    pool: ProcessPoolExecutor,
    actors: Actors,
    port: int,
    segments: Sequence[tuple[float, float]],
    mix: Mix,
    seed: int,
    only_to: str | None = None,
) -> Planned:
    """Build every request of a phase (before it starts, so that crypto does not compete)."""
    t0, cpu0 = time.monotonic(), _pool_cpu(pool)
    offsets = schedule(segments)
    rng = random.Random(seed)
    names, weights = mix.kinds()
    senders = sorted(actors.world.senders)
    parties = actors.world.parties
    kinds, specs = [], []
    base = int(time.time()) + IAT_LEAD_S
    for i, off in enumerate(offsets):
        kind = rng.choices(names, weights)[0]
        fp = senders[i % len(senders)]
        agency = fp.split("/")[0]
        others = [p for p in parties if p != agency]
        n = {"r1": 1, "r3": 3, "r26": 26, "oos": 3}[kind]
        recipients = tuple(sorted(others if n >= len(others) else rng.sample(others, n)))
        if only_to and n == 1 and agency != only_to:
            recipients = (only_to,)
        kinds.append(kind)
        specs.append((fp, recipients, kind != "oos", base + int(off)))
    chunk = max(1, min(500, -(-len(specs) // (4 * (os.cpu_count() or 2)))))
    jobs = [
        (port, actors.world.senders, actors.recipients, specs[i : i + chunk])
        for i in range(0, len(specs), chunk)
    ]
    built = [item for batch in pool.map(build_job, jobs) for item in batch]
    acks: dict[tuple[str, str], bytes] = {}
    shas: dict[str, str] = {}
    for mid, _req, digest, ack_list in built:
        shas[mid] = digest
        for r, raw in ack_list:
            acks[(r, mid)] = raw
    return Planned(
        offsets=offsets,
        kinds=kinds,
        mids=[b[0] for b in built],
        senders=[s[0].split("/")[0] for s in specs],
        recipients=[s[1] for s in specs],
        requests=[b[1] for b in built],
        acks=acks,
        envelope_sha=shas,
        build_seconds=time.monotonic() - t0,
        build_cpu_s=_pool_cpu(pool) - cpu0,
    )


def _pool_cpu(pool: ProcessPoolExecutor) -> float:
    """CPU seconds used so far by the pool's worker processes (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


# --- HTTP -----------------------------------------------------------------------------------


class Conn(_Conn):
    """`submit_bench`'s keep-alive connection, which also knows when the server closed it."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        super().connection_lost(exc)


class Pool:
    """Keep-alive connections to one port; a closed one is replaced, a lost request retried once."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.idle: list[Conn] = []
        self.total = 0
        self.free = asyncio.Condition()
        self.retries = 0

    async def _new(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Conn, "127.0.0.1", self.port)
        return conn

    async def _get(self) -> Conn:
        async with self.free:
            while True:
                while self.idle:
                    conn = self.idle.pop()
                    if not conn.closed:
                        return conn
                    self.total -= 1
                if self.total < self.size:
                    self.total += 1
                    break
                await self.free.wait()
        try:
            return await self._new()
        except OSError:
            async with self.free:
                self.total -= 1
                self.free.notify()
            raise

    async def _put(self, conn: Conn) -> None:
        async with self.free:
            if conn.closed:
                self.total -= 1
            else:
                self.idle.append(conn)
            self.free.notify()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Status and body; status 0 when no answer came (after one retry on a new connection)."""
        for attempt in (0, 1):
            conn = await self._get()
            try:
                result = await conn.request(raw)
            except ConnectionError:
                conn.closed = True
                await self._put(conn)
                if attempt == 0:
                    self.retries += 1
                    continue
                return 0, b"connection lost"
            await self._put(conn)
            return result
        return 0, b""

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


# --- submitter (+ auditor) ------------------------------------------------------------------


def submitter_main(
    port: int,
    offsets: Sequence[float],
    requests: Sequence[bytes],
    t0: float,
    max_conns: int,
    auditor_token: str,
    audit_rate: float,
    out_path: str,
) -> None:
    """Child process: the open loop. Records (index, status, done - scheduled, done time)."""
    _freeze_heap()
    uvloop.run(
        _submitter(port, offsets, requests, t0, max_conns, auditor_token, audit_rate, out_path)
    )


def _freeze_heap() -> None:
    """Keep what a client process was handed (pre-built envelopes, acks, keys) out of its GC:
    full collections over it paused the submit benchmark's generator for up to 190 ms, which
    a client charges to the broker as latency."""
    gc.collect()
    gc.freeze()


async def _submitter(
    port: int,
    offsets: Sequence[float],
    requests: Sequence[bytes],
    t0: float,
    max_conns: int,
    auditor_token: str,
    audit_rate: float,
    out_path: str,
) -> None:
    pool = Pool(port, max_conns)
    records: list[tuple[int, int, float, float]] = []
    bodies: dict[int, bytes] = {}
    late = 0

    async def one(i: int, scheduled: float) -> None:
        status, body = await pool.request(requests[i])
        done = time.time()
        records.append((i, status, done - scheduled, done))
        if status != 201 and len(bodies) < 20 and status not in bodies:
            bodies[status] = body[:400]

    stop_audit = asyncio.Event()
    auditor = asyncio.ensure_future(_auditor(port, auditor_token, audit_rate, stop_audit))
    tasks = []
    for i, off in enumerate(offsets):
        scheduled = t0 + off
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    sending_done = time.time()
    await asyncio.gather(*tasks)
    stop_audit.set()
    audit = await auditor
    pool.close()
    with open(out_path, "wb") as f:
        pickle.dump(
            {
                "records": records,
                "error_bodies": {k: v.decode(errors="replace") for k, v in bodies.items()},
                "late_sends": late,
                "retries": pool.retries,
                "sending_done": sending_done,
                "answered_done": time.time(),
                "audit": audit,
                "cpu_s": _self_cpu(),
            },
            f,
        )


async def _auditor(port: int, token: str, rate: float, stop: asyncio.Event) -> dict[str, Any]:
    """Pages the audit log at `rate` pages/s (open loop), oldest first, again from the start."""
    pool = Pool(port, 4)
    records: list[tuple[float, int, float, int]] = []
    if rate <= 0:
        return {"records": records}
    cursor: str | None = None
    t0 = time.time()
    i = 0
    lock = asyncio.Lock()

    async def page(scheduled: float) -> None:
        nonlocal cursor
        async with lock:  # one cursor: pages follow each other
            path = "/v1/audit/events?limit=100" + (f"&cursor={cursor}" if cursor else "")
            raw = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
            status, body = await pool.request(raw)
            done = time.time()
            n = 0
            if status == 200:
                data = json.loads(body)
                n = len(data["items"])
                cursor = data["next_cursor"]
            records.append((scheduled, status, done - scheduled, n))

    tasks = []
    while not stop.is_set():
        scheduled = t0 + i / rate
        i += 1
        delay = scheduled - time.time()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        tasks.append(asyncio.ensure_future(page(scheduled)))
    await asyncio.gather(*tasks)
    pool.close()
    return {"records": records}


def _self_cpu() -> float:
    r = os.times()
    return r.user + r.system


# --- recipients -----------------------------------------------------------------------------


def receiver_main(
    port: int,
    agencies: dict[str, tuple[str, str | None]],  # agency -> (token, cursor)
    senders_sig: dict[str, dict[str, Any]],  # sender agency -> public signing JWK
    acks: dict[tuple[str, str], bytes],
    shas: dict[str, str],
    wait: float,
    open_share: float,
    stop: Any,  # multiprocessing.Event
    out_path: str,
) -> None:
    _freeze_heap()
    uvloop.run(_receiver(port, agencies, senders_sig, acks, shas, wait, open_share, stop, out_path))


async def _receiver(
    port: int,
    agencies: dict[str, tuple[str, str | None]],
    senders_sig: dict[str, dict[str, Any]],
    acks: dict[tuple[str, str], bytes],
    shas: dict[str, str],
    wait: float,
    open_share: float,
    stop: Any,
    out_path: str,
) -> None:
    ack_pool = Pool(port, 8 * len(agencies))
    seen: list[tuple[str, str, int, float, float]] = []  # agency, mid, seq, received_at, seen
    polls: list[tuple[float, str, int, float, int]] = []  # start, kind, status, seconds, items
    ack_records: list[tuple[float, int, float]] = []  # start, status, seconds
    problems: list[str] = []
    opened = 0
    open_cpu = 0.0
    rng = random.Random(port)
    enc_keys = {a: [submit_bench.encryption_key(a)] for a in agencies}

    cursors = {a: c for a, (_, c) in agencies.items()}

    async def poll_loop(agency: str, token: str) -> None:
        nonlocal opened, open_cpu
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
        cursor = cursors[agency]
        waiting = True
        sem = asyncio.Semaphore(8)
        pending: set[asyncio.Future[None]] = set()
        while True:
            w = wait if waiting else 0
            path = f"/v1/inbox?limit=100&wait={w:g}" + (f"&after={cursor}" if cursor else "")
            raw = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
            if conn.closed:
                _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
            start = time.time()
            try:
                status, body = await conn.request(raw)
            except ConnectionError:
                conn.closed = True
                polls.append((start, "long" if waiting else "page", 0, time.time() - start, 0))
                continue
            at = time.time()
            if status == 429:  # long-poll slots full in that API process: as the SDK would,
                # wait Retry-After, on a new connection (which may reach another process)
                polls.append((start, "long" if waiting else "page", status, at - start, 0))
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
                await asyncio.sleep(1.0)
                continue
            if status != 200:
                polls.append((start, "long" if waiting else "page", status, at - start, 0))
                if len(problems) < 20:
                    problems.append(f"poll {agency} {status}: {body[:200]!r}")
                await asyncio.sleep(0.2)
                continue
            page = json.loads(body)
            items = page["items"]
            polls.append((start, "long" if waiting else "page", status, at - start, len(items)))
            cursor = cursors[agency] = page["next_cursor"]
            waiting = not items
            if not items:
                continue
            jobs = []
            for item in items:
                mid = item["mid"]
                received = _epoch(item["received_at"])
                seen.append((agency, mid, item["seq"], received, at))
                if shas.get(mid) != item["envelope_sha256"]:
                    problems.append(f"{agency} {mid}: envelope differs from what was sent")
                    continue
                if open_share >= 1 or rng.random() < open_share:
                    c0 = time.process_time()
                    try:
                        env.open_envelope(
                            item["envelope"],
                            my_agency=agency,
                            my_enc_keys=enc_keys[agency],
                            sender_sig_jwk=senders_sig[item["sender"]],
                            at=int(received),
                        )
                        opened += 1
                    except Exception as exc:  # any failure to open is a failed run
                        problems.append(f"{agency} {mid}: cannot open: {exc!r}")
                    open_cpu += time.process_time() - c0
                ack = acks.get((agency, mid))
                if ack is None:
                    problems.append(f"{agency} {mid}: no ack prepared (not sent to us?)")
                    continue
                jobs.append(_ack(ack_pool, ack, sem, ack_records, problems))
            # Acks go out while the next poll waits (a pipelined partner): accept-to-inbox
            # then measures the broker, not this client's ack round trips. At most 8 acks in
            # flight per agency; past that the poll loop waits for them (back-pressure).
            for job in jobs:
                await sem.acquire()
                pending.add(asyncio.ensure_future(job))
                pending.difference_update({t for t in pending if t.done()})

    tasks = [asyncio.ensure_future(poll_loop(a, t)) for a, (t, _) in agencies.items()]
    while not stop.is_set():
        await asyncio.sleep(0.1)
        for t in tasks:
            if t.done() and t.exception() is not None:
                problems.append(f"poller died: {t.exception()!r}")
                stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ack_pool.close()
    with open(out_path, "wb") as f:
        pickle.dump(
            {
                "seen": seen,
                "cursors": cursors,
                "polls": polls,
                "acks": ack_records,
                "problems": problems[:50],
                "opened": opened,
                "open_cpu_s": open_cpu,
                "cpu_s": _self_cpu(),
            },
            f,
        )


async def _ack(
    pool: Pool,
    raw: bytes,
    sem: asyncio.Semaphore,
    records: list[tuple[float, int, float]],
    problems: list[str],
) -> None:
    try:  # the caller acquired `sem`
        start = time.time()
        status, body = await pool.request(raw)
        records.append((start, status, time.time() - start))
        if status != 200 and len(problems) < 50:
            problems.append(f"ack {status}: {body[:200]!r}")
    finally:
        sem.release()


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
