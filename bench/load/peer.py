"""The peer, side by side: medallion (OASIS TAXII 2.1 reference server) with its memory backend.

medallion is installed from PyPI into its own virtual environment, `bench/.peer-venv`
(git-ignored; `--setup-peer` or the command in `bench/load/__init__.py` creates it), never into
the project's. It runs under gunicorn (1 process: the memory backend's state is per process;
4 threads) on 127.0.0.1 with HTTP Basic auth, as in `performance-baselines.md` part C.

The same generator (raw asyncio, pre-encoded requests, keep-alive) drives both, one after the
other in the same run, `--peer-clients` connections in a closed loop for `--peer-seconds`:

- **posted objects/s**: medallion `POST /api1/collections/<post>/objects/` of a one-object
  envelope (a STIX 2.1 note padded to about 4 KB); ours `POST /v1/messages` of a signed,
  encrypted 4 KB alert to one recipient (verified, scope-checked, stored with fsync, logged,
  relayed by the Celery worker that runs meanwhile);
- **polled envelopes/s**: medallion `GET …/objects/?limit=<page>` over a collection of
  `--peer-objects` objects, following `next` until `more` is false, then again; ours
  `GET /v1/inbox?limit=<page>` over the first `--peer-objects` items of one agency's inbox,
  following `next_cursor`, then again from the start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

from bench import delivery_bench
from bench.submit_bench import ROOT

from . import report
from .stack import Actors, Stack
from .traffic import Conn, Mix, plan

PEER_VENV = ROOT / "bench/.peer-venv"
USER, PASSWORD = "bench", "bench-password"
POST_COLLECTION = "4f1e5c3a-0000-4000-8000-000000000001"
POLL_COLLECTION = "4f1e5c3a-0000-4000-8000-000000000002"
TAXII = "application/taxii+json;version=2.1"
OBJECT_BYTES = 3950  # a one-object envelope of about 4 KB, as in the baselines


def setup_peer_venv() -> None:
    """Create `bench/.peer-venv` with medallion, gunicorn and matplotlib (from PyPI)."""
    if not (PEER_VENV / "bin/python").exists():
        subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [str(PEER_VENV / "bin/pip"), "install", "-q", "medallion==3.0.0", "gunicorn", "matplotlib"],
        check=True,
    )


def note(i: int) -> dict[str, Any]:
    ts = "2026-01-01T00:00:00.000Z"
    obj = {
        "type": "note",
        "spec_version": "2.1",
        "id": f"note--{uuid.uuid4()}",
        "created": ts,
        "modified": ts,
        "abstract": f"bench alert {i}",
        "content": "",
        "object_refs": [f"indicator--{uuid.UUID(int=i + 1)}"],
    }
    obj["content"] = "x" * (OBJECT_BYTES - len(json.dumps(obj)))
    return obj


def write_config(folder: Path, port: int, objects: int) -> None:
    manifest, objs = [], []
    for i in range(objects):
        obj = note(i)
        objs.append(obj)
        manifest.append(
            {
                "id": obj["id"],
                "date_added": f"2026-01-01T00:00:{i // 1000:02d}.{i % 1000:03d}000Z",
                "version": obj["modified"],
                "media_type": "application/stix+json;version=2.1",
            }
        )

    def collection(cid: str, title: str, objects: list[Any], manifest: list[Any]) -> dict:
        return {
            "id": cid,
            "title": title,
            "can_read": True,
            "can_write": True,
            "media_types": ["application/stix+json;version=2.1"],
            "objects": objects,
            "manifest": manifest,
        }

    data = {
        "/discovery": {
            "title": "bench",
            "default": f"http://127.0.0.1:{port}/api1/",
            "api_roots": [f"http://127.0.0.1:{port}/api1/"],
        },
        "api1": {
            "information": {
                "title": "bench",
                "versions": [TAXII],
                "max_content_length": 10485760,
            },
            "status": [],
            "collections": [
                collection(POST_COLLECTION, "posted", [], []),
                collection(POLL_COLLECTION, "polled", objs, manifest),
            ],
        },
    }
    (folder / "data.json").write_text(json.dumps(data))
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": "data.json",
        },
        "users": {USER: PASSWORD},
        "taxii": {"max_page_size": 100},
    }
    (folder / "config.json").write_text(json.dumps(config))


def start_medallion(objects: int) -> tuple[delivery_bench.Proc, int]:
    if not (PEER_VENV / "bin/gunicorn").exists():
        setup_peer_venv()
    folder = Path(tempfile.mkdtemp(prefix="medallion-"))
    port = delivery_bench.free_port()
    write_config(folder, port, objects)
    cmd = [
        str(PEER_VENV / "bin/gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread",
        "--threads", "4", "--chdir", str(folder), "medallion:load_app('config.json')",
    ]  # fmt: skip
    proc = delivery_bench.Proc("medallion", cmd, {"PATH": str(PEER_VENV / "bin")})
    auth = {"Authorization": _basic(), "Accept": TAXII}
    proc.wait_for(lambda: delivery_bench._get(port, "/taxii2/", auth)[0] == 200, 60)
    return proc, port


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def medallion_post(port: int, i: int) -> bytes:
    body = json.dumps({"objects": [note(100000 + i)]}).encode()
    head = (
        f"POST /api1/collections/{POST_COLLECTION}/objects/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: {_basic()}\r\nAccept: {TAXII}\r\nContent-Type: {TAXII}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _closed(
    port: int, next_request: Callable[[int], bytes | None], conns: int, seconds: float
) -> dict[str, Any]:
    """`conns` keep-alive clients, each sending its next request when the previous answered."""
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    lat: list[tuple[float, float]] = []  # (done, seconds)
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
        while time.perf_counter() < deadline:
            raw = next_request(next(counter))
            if raw is None:
                break
            t = time.perf_counter()
            status, _ = await conn.request(raw)
            lat.append((time.perf_counter(), time.perf_counter() - t))
            statuses[status] += 1
        assert conn.transport is not None
        conn.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(conns)))
    elapsed = time.perf_counter() - t0
    return _posted(statuses, lat, elapsed, t0)


def _posted(statuses: Counter[int], lat: list[tuple[float, float]], elapsed: float, t0: float):
    ok = statuses.get(201, 0) + statuses.get(202, 0)
    d = report.dist([x for _, x in lat])
    fifth = elapsed / 5
    first = sum(1 for done, _ in lat if done - t0 < fifth)
    last = sum(1 for done, _ in lat if done - t0 >= elapsed - fifth)
    return {
        "requests": len(lat),
        "ok": ok,
        "per_s": round(ok / elapsed, 1),
        "first_fifth_per_s": round(first / fifth, 1),
        "last_fifth_per_s": round(last / fifth, 1),
        "p50_ms": d["p50"],
        "p99_ms": d["p99"],
        "statuses": dict(statuses),
        "seconds": round(elapsed, 1),
    }


async def _pages(
    port: int,
    first: Callable[[], bytes],
    follow: Callable[[Any], bytes | None],
    parse: Callable[[bytes], tuple[int, Any]],
    conns: int,
    seconds: float,
) -> dict[str, Any]:
    """Each client pages through the set (first page, then the server's cursor), again and again."""
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    lat: list[float] = []
    first_lat: list[float] = []
    objects = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal objects
        _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
        raw: bytes | None = first()
        is_first = True
        while time.perf_counter() < deadline:
            assert raw is not None
            t = time.perf_counter()
            status, body = await conn.request(raw)
            (first_lat if is_first else lat).append(time.perf_counter() - t)
            statuses[status] += 1
            if status != 200:
                raw, is_first = first(), True
                continue
            n, cursor = parse(body)
            objects += n
            raw = follow(cursor)
            is_first = raw is None
            if raw is None:
                raw = first()
        assert conn.transport is not None
        conn.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(conns)))
    elapsed = time.perf_counter() - t0
    pages = len(lat) + len(first_lat)
    return {
        "pages": pages,
        "pages_per_s": round(pages / elapsed, 1),
        "objects_per_s": round(objects / elapsed, 1),
        "first_page_ms": report.dist(first_lat),
        "next_page_ms": report.dist(lat),
        "statuses": dict(statuses),
        "seconds": round(elapsed, 1),
    }


def side_by_side(
    args: Any, stack: Stack, actors: Actors, pool: ProcessPoolExecutor
) -> dict[str, Any]:
    secs, conns, n_obj, page = args.peer_seconds, args.peer_clients, args.peer_objects, args.page
    out: dict[str, Any] = {"clients": conns, "seconds": secs, "objects": n_obj, "page": page}
    med, mport = start_medallion(n_obj)
    try:
        print("medallion: posting ...", flush=True)
        post = uvloop.run(_closed(mport, lambda i: medallion_post(mport, i), conns, secs))
        print(f"  {post}", flush=True)

        def m_first() -> bytes:
            return (
                f"GET /api1/collections/{POLL_COLLECTION}/objects/?limit={page} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{mport}\r\nAuthorization: {_basic()}\r\nAccept: {TAXII}\r\n\r\n"
            ).encode()

        def m_follow(nxt: Any) -> bytes | None:
            if not nxt:
                return None
            return (
                f"GET /api1/collections/{POLL_COLLECTION}/objects/?limit={page}&next={nxt}"
                f" HTTP/1.1\r\nHost: 127.0.0.1:{mport}\r\nAuthorization: {_basic()}\r\n"
                f"Accept: {TAXII}\r\n\r\n"
            ).encode()

        def m_parse(body: bytes) -> tuple[int, Any]:
            data = json.loads(body)
            return len(data.get("objects", [])), data.get("next") if data.get("more") else None

        print("medallion: polling ...", flush=True)
        poll = uvloop.run(_pages(mport, m_first, m_follow, m_parse, conns, secs))
        print(f"  {poll}", flush=True)
        out["medallion"] = {"post": post, "poll": poll}
    finally:
        med.stop()

    # Ours: 4 KB alerts to one recipient, as many as the closed loop can send in the time.
    budget = int(max(300, 400 * secs))
    agency = "HK-CED"  # the polled inbox: every alert of this phase goes to it
    planned = plan(
        pool, actors, stack.port, [(budget / secs, secs)], Mix(1, 0, 0, 0), 7, only_to=agency
    )
    print(f"ours: built {len(planned.requests)} alerts; posting ...", flush=True)
    post = uvloop.run(
        _closed(
            stack.port,
            lambda i: planned.requests[i] if i < len(planned.requests) else None,
            conns,
            secs,
        )
    )
    print(f"  {post}", flush=True)
    token = actors.recipients[agency]
    _wait_available(stack.db, agency, n_obj)
    limit_pages = -(-n_obj // page)

    def o_req(after: str | None) -> bytes:
        q = f"limit={page}" + (f"&after={after}" if after else "")
        return (
            f"GET /v1/inbox?{q} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()

    def o_parse(body: bytes) -> tuple[int, Any]:
        data = json.loads(body)
        return len(data["items"]), (data["next_cursor"] if data["items"] else None)

    def o_follow(cursor: Any) -> bytes | None:
        # Stop after the first `n_obj` items (same set size as medallion's), then again.
        if cursor is None or int(cursor) >= limit_pages * page:
            return None
        return o_req(cursor)

    # One pass first: the first fetch of each item records it (a write), as a partner's would.
    uvloop.run(_pages(stack.port, lambda: o_req(None), o_follow, o_parse, 1, 1.0))
    print(f"ours: polling {agency}'s inbox ...", flush=True)
    poll = uvloop.run(_pages(stack.port, lambda: o_req(None), o_follow, o_parse, conns, secs))
    print(f"  {poll}", flush=True)
    out["ours"] = {"post": post, "poll": poll, "inbox": agency}
    out["plumbing"] = plumbing(stack, planned.requests, n_obj, page, conns, secs)
    m, o = out["medallion"], out["ours"]
    out["ratio_posts"] = round(o["post"]["per_s"] / max(m["post"]["per_s"], 1e-9), 1)
    out["ratio_polled"] = round(
        o["poll"]["objects_per_s"] / max(m["poll"]["objects_per_s"], 1e-9), 1
    )
    pl = out["plumbing"]
    out["ours_of_plumbing_posts"] = round(o["post"]["per_s"] / max(pl["post"]["per_s"], 1e-9), 3)
    out["ours_of_plumbing_polled"] = round(
        o["poll"]["objects_per_s"] / max(pl["poll"]["objects_per_s"], 1e-9), 3
    )
    out["targets"] = {
        "posts>=10x": out["ratio_posts"] >= 10,
        "polled>=20x": out["ratio_polled"] >= 20,
    }
    bad = [s for v in (m, o) for x in v.values() if isinstance(x, dict)
           for s in x.get("statuses", {}) if int(s) >= 500]  # fmt: skip
    out["passed"] = not bad and o["post"]["statuses"].keys() <= {201}
    return out


def _wait_available(db: str, agency: str, n: int, timeout: float = 120.0) -> None:
    import psycopg

    from bench.submit_bench import admin_url

    end = time.time() + timeout
    while time.time() < end:
        with psycopg.connect(admin_url(db), autocommit=True) as conn:
            row = conn.execute(
                "select count(*) from deliveries where recipient = %s and inbox_seq <= %s",
                (agency, n),
            ).fetchone()
        if row and row[0] >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{agency}'s inbox has fewer than {n} available items")


def plumbing(
    stack: Stack, template: list[bytes], n_obj: int, page: int, conns: int, secs: float
) -> dict[str, Any]:
    """The plumbing ceilings of `submit_bench` and `delivery_bench`, same generator and sizes.

    POST: `bench/plumbing_app.py` `/insert_async` (one INSERT+COMMIT of the same JSON body).
    Poll: `bench/inbox_plumbing_app.py` `/page` over a copy of the same inbox (one SELECT).
    """
    from bench import submit_bench

    base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    db = f"postgres@127.0.0.1:5432/{stack.db}"
    submit_bench.create_plain_table(stack.db)
    port = delivery_bench.free_port()
    env = {**base, "BENCH_PLUMB_DB": db, "BENCH_DRIVER": "async", "BENCH_POOL_SIZE": "20"}
    server = submit_bench.Server(
        "plumbing-async", ["plumbing_app:app", "--app-dir=bench"], port, env
    )
    try:
        server.wait_ready("/ping")
        reqs = submit_bench._plain_requests(port, "/insert_async", template, len(template))
        post = uvloop.run(_closed(port, lambda i: reqs[i] if i < len(reqs) else None, conns, secs))
    finally:
        server.stop()
    print(f"  plumbing post: {post}", flush=True)
    delivery_bench.copy_pages(stack.db)  # HK-CED's inbox, by inbox sequence
    port = delivery_bench.free_port()
    proc = delivery_bench.uvicorn(
        "plumbing", ["bench.inbox_plumbing_app:app"], port, {**base, "BENCH_PLUMB_DB": db}
    )
    try:

        def req(after: str) -> bytes:
            return f"GET /page?after={after}&limit={page} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

        def parse(body: bytes) -> tuple[int, Any]:
            data = json.loads(body)
            return len(data["items"]), (data["next_cursor"] if data["items"] else None)

        def follow(cursor: Any) -> bytes | None:
            return None if cursor is None or int(cursor) >= n_obj else req(cursor)

        poll = uvloop.run(_pages(port, lambda: req("0"), follow, parse, conns, secs))
    finally:
        proc.stop()
    print(f"  plumbing poll: {poll}", flush=True)
    return {"post": post, "poll": poll}
