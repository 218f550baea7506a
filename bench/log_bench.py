"""Transparency-log benchmark on PostgreSQL: sequencer throughput, proof latency, merge delay.

1. Sequencer throughput (target 10,000 events/s): N unsequenced `msg.accepted`-shaped events are
   sequenced in batches of 5,000, one transaction and one signed checkpoint each. The ceiling,
   measured in the same run: the raw INSERT rate of the very same leaf rows into a plain table
   (no keys, no indexes), with the same Core executemany on the same `AsyncSession`, and the
   same for leaves plus nodes; the same rows with asyncpg's COPY; the sequencer's own per-leaf
   CPU work (canonical bytes and hash, no database); and raw SHA-256 of the same bytes, the
   floor of any log.
2. Inclusion-proof latency through the repository (target < 5 ms, flat in n): at 1 thousand
   and 1 million leaves (bulk-loaded with COPY from `merkle.MemoryTreeStore.from_leaf_hashes`,
   on a connection of its own: fixtures, not the broker's write path).
3. Maximum merge delay with the embedded ticker (target p99 < 1 s): events committed at a steady
   rate, delay from the event's commit to the signed checkpoint that covers it.

Run: BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
     .venv/bin/python bench/log_bench.py [--events 50000] [--big 1000000]
It creates (and drops first) its own database `broker_bench_log`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Uuid,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.audit.service import NewEvent

DB_NAME = "broker_bench_log"
URL = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def setup_database() -> str:
    url = make_url(URL)
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    bench_url = url.set(database=DB_NAME).render_as_string(hide_password=False)
    from broker import config, db, migrations_check
    from broker.logging import configure_logging

    tmp = Path(tempfile.mkdtemp(prefix="log-bench-"))
    config.configure(
        database_url=bench_url, data_dir=tmp, keys_dir=tmp / "keys", log_level="WARNING"
    )
    configure_logging("WARNING", json=True)
    db.reset_engine()
    migrations_check.upgrade()
    return bench_url


def execute(sql: str) -> None:
    """One statement in a transaction of its own."""
    from broker import db

    async def run(s: AsyncSession) -> None:
        await s.execute(text(sql))

    db.call(run)


def plain_url() -> str:
    """The benchmark database for psycopg (bulk loading, outside the broker's code)."""
    from broker.config import settings

    url = make_url(settings().sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def reset_log() -> None:
    execute("TRUNCATE log_leaves, log_nodes, checkpoints, audit_events")


def event_rows(n: int, start: datetime) -> list[NewEvent]:
    """Events shaped like the messaging domain's `msg.accepted` (PROTOCOL.md 5.2 example)."""
    from broker.audit import service as audit

    rng = random.Random(7)
    agencies = ["VN-GDC", "HK-CED", "KR-KCS", "CN-GACC", "NZ-POL", "VN-MPS"]
    rows = []
    for i in range(n):
        sender, *recipients = rng.sample(agencies, 3)
        rows.append(
            audit.event(
                "msg.accepted",
                actor=f"focal_point:{sender.lower()}-fp-01",
                subject=sender,
                details={
                    "mid": str(uuid.uuid4()),
                    "kind": "alert",
                    "sender": sender,
                    "sender_fp": f"{sender}/fp-01",
                    "sender_kid": "WOvaOBKRN1M5FjVDR0kE7E8FqPpsfjq4yxMWDkmbsBI",
                    "recipients": recipients,
                    "agreement": "MEKONG-DRAGON",
                    "operation": "MEKONG-DRAGON-V",
                    "offence": "narcotics",
                    "subject_types": ["person", "conveyance"],
                    "handling": "TLP:AMBER",
                    "envelope_sha256": "pufLHJuyrgSLByv9owStC-HvsSmNW6elNNJum3PsUH0",
                    "policy_sha256": "pufLHJuyrgSLByv9owStC-HvsSmNW6elNNJum3PsUH0",
                },
                at=start + timedelta(microseconds=i),
            )
        )
    return rows


def insert_events(rows: Sequence[NewEvent]) -> None:
    from broker import db
    from broker.audit import service as audit

    for i in range(0, len(rows), 5000):
        db.call(audit.record_many, rows[i : i + 5000])


class Phases:
    """Wall time per repository call of the sequencer, to show where a batch goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, module: Any, name: str) -> None:
        """Time every call of `module.name`, a function or a coroutine function (awaited)."""
        original = getattr(module, name)
        seconds = self.seconds

        if inspect.iscoroutinefunction(original):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    seconds[name] += time.perf_counter() - t

            setattr(module, name, timed_async)
        else:

            def timed(*args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    seconds[name] += time.perf_counter() - t

            setattr(module, name, timed)
        self._undo.append(lambda: setattr(module, name, original))

    def restore(self) -> None:
        for undo in self._undo:
            undo()


def sequencer_throughput(n: int) -> dict[str, float]:
    from broker import db
    from broker.audit import repository, sequencer
    from broker.crypto import merkle

    reset_log()
    insert_events(event_rows(n, datetime.now(UTC)))
    execute("ANALYZE audit_events")
    phases = Phases()
    for name in (
        "lock_sequencer",
        "latest_checkpoint",
        "leaf_count",
        "unsequenced",
        "get_nodes",
        "mark_sequenced",
        "insert_leaves",
        "insert_nodes",
        "add_checkpoint",
    ):
        phases.wrap(repository, name)
    for name in ("_leaves", "sign", "_check_consistent", "_check_head"):
        phases.wrap(sequencer, name)
    phases.wrap(merkle, "append_leaves")

    async def sequence_all() -> float:
        """Batches until all `n` are sequenced, each in its own transaction; the commits' time."""
        commit_s, done = 0.0, 0
        while done < n:
            async with db.session_scope() as session:
                done += await sequencer.sequence(session)
                c = time.perf_counter()
            commit_s += time.perf_counter() - c
        return commit_s

    t = time.perf_counter()
    commit_s = db.run(sequence_all)
    elapsed = time.perf_counter() - t
    phases.restore()
    out = {"events": n, "seconds": elapsed, "rate": n / elapsed, "commit": commit_s}
    accounted = sum(phases.seconds.values()) + commit_s
    out.update({f"phase:{k}": v for k, v in phases.seconds.items()})
    out["phase:other (session, result rows, GC)"] = elapsed - accounted
    return out


def plain_insert_ceiling(n: int) -> dict[str, float]:
    """Insert the same leaf (and node) rows into plain tables: no keys, indexes or FKs."""
    from broker import db
    from broker.audit.models import LogLeaf, LogNode

    meta = MetaData()
    plain_leaves = Table(
        "bench_plain_leaves",
        meta,
        Column("index", BigInteger),
        Column("event_id", Uuid),
        Column("leaf_bytes", LargeBinary),
        Column("leaf_hash", LargeBinary),
        Column("ts", DateTime(timezone=True)),
    )
    plain_nodes = Table(
        "bench_plain_nodes",
        meta,
        Column("level", SmallInteger),
        Column("index", BigInteger),
        Column("hash", LargeBinary),
    )

    async def create_tables() -> None:
        async with db.engine().begin() as conn:
            await conn.run_sync(meta.drop_all)
            await conn.run_sync(meta.create_all)

    async def drop_tables() -> None:
        async with db.engine().begin() as conn:
            await conn.run_sync(meta.drop_all)

    async def stored(s: AsyncSession) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        leaf, node = LogLeaf.__table__.c, LogNode.__table__.c
        rows = await s.execute(
            select(leaf["index"], leaf.event_id, leaf.leaf_bytes, leaf.leaf_hash, leaf.ts).order_by(
                leaf["index"]
            )
        )
        leaves = [dict(r._mapping) for r in rows]
        rows = await s.execute(select(node.level, node["index"], node.hash))
        return leaves, [dict(r._mapping) for r in rows]

    db.run(create_tables)
    leaves, nodes = db.call(stored)
    assert len(leaves) == n

    def run(rows: list[dict[str, Any]], table: Table, extra: list[dict[str, Any]] | None) -> float:
        per = 5000
        k = len(extra) // max(len(rows) // per, 1) if extra else 0

        async def batches() -> None:
            for b, i in enumerate(range(0, len(rows), per)):
                async with db.session_scope() as s:
                    await s.execute(insert(table), rows[i : i + per])
                    if extra:
                        await s.execute(insert(plain_nodes), extra[b * k : (b + 1) * k])

        t = time.perf_counter()
        db.run(batches)
        return time.perf_counter() - t

    leaves_s = run(leaves, plain_leaves, None)
    execute("TRUNCATE bench_plain_leaves, bench_plain_nodes")
    both_s = run(leaves, plain_leaves, nodes)
    execute("TRUNCATE bench_plain_leaves, bench_plain_nodes")

    async def copy_batches() -> None:
        """Leaves and nodes with asyncpg's binary COPY, one transaction per batch."""
        per, k = 5000, len(nodes) // max(n // 5000, 1)
        async with db.engine().connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            for b, i in enumerate(range(0, n, per)):
                async with raw.transaction():
                    await raw.copy_records_to_table(
                        plain_leaves.name,
                        records=[tuple(r.values()) for r in leaves[i : i + per]],
                        columns=[c.name for c in plain_leaves.columns],
                    )
                    await raw.copy_records_to_table(
                        plain_nodes.name,
                        records=[tuple(r.values()) for r in nodes[b * k : (b + 1) * k]],
                        columns=[c.name for c in plain_nodes.columns],
                    )

    t = time.perf_counter()
    db.run(copy_batches)
    copy_s = time.perf_counter() - t
    db.run(drop_tables)
    return {
        "leaves_rate": n / leaves_s,
        "leaves_nodes_rate": n / both_s,
        "copy_rate": n / copy_s,
        "nodes": len(nodes),
    }


def cpu_floor(n: int) -> dict[str, float]:
    """The sequencer's per-leaf CPU work alone, on the same events, and raw SHA-256."""
    import hashlib

    from broker import db
    from broker.audit import repository, sequencer

    async def unsequenced(s: AsyncSession) -> Any:
        # The events as the sequencer reads them; the UPDATE is rolled back.
        await s.execute(text("UPDATE audit_events SET leaf_index = NULL"))
        events = await repository.unsequenced(s, n)
        await s.rollback()
        return events

    events = db.call(unsequenced)
    assert len(events) == n
    t = time.perf_counter()
    rows, _ = sequencer._leaves(events, 0)
    leaves_s = time.perf_counter() - t
    t = time.perf_counter()
    for _, _, data, _, _ in rows:
        hashlib.sha256(b"\x00" + data).digest()
    sha_s = time.perf_counter() - t
    return {"leaves_rate": n / leaves_s, "sha256_rate": n / sha_s}


def bulk_load(size: int) -> None:
    """Events, leaves, nodes and a signed checkpoint for a tree of `size` leaves, with COPY."""
    from broker import db
    from broker.audit import sequencer
    from broker.crypto import merkle

    reset_log()
    t = time.perf_counter()
    leaf_data = [b'{"i":%d,"index":%d,"kind":"bench","v":1}' % (i, i) for i in range(size)]
    hashes = [merkle.leaf_hash(d) for d in leaf_data]
    store = merkle.MemoryTreeStore.from_leaf_hashes(hashes)
    ids = [uuid.uuid4() for _ in range(size)]
    now = datetime.now(UTC)
    with psycopg.connect(plain_url()) as raw:
        cur = raw.cursor()
        with cur.copy(
            "COPY audit_events (id, kind, actor, subject, details, created_at, leaf_index) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(
                ["uuid", "varchar", "varchar", "varchar", "jsonb", "timestamptz", "int8"]
            )
            for i in range(size):
                copy.write_row((ids[i], "bench", "bench", None, "{}", now, i))
        with cur.copy(
            'COPY log_leaves ("index", event_id, leaf_bytes, leaf_hash, ts) FROM STDIN (FORMAT BINARY)'
        ) as copy:
            copy.set_types(["int8", "uuid", "bytea", "bytea", "timestamptz"])
            for i in range(size):
                copy.write_row((i, ids[i], leaf_data[i], hashes[i], now))
        with cur.copy('COPY log_nodes (level, "index", hash) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(["int2", "int8", "bytea"])
            for level, row in enumerate(store.levels):
                for i, h in enumerate(row):
                    copy.write_row((level, i, h))
        raw.commit()
    db.call(sequencer.sign, size, merkle.root(size, store))
    execute("ANALYZE")
    print(
        f"   loaded {size:,} leaves and {sum(map(len, store.levels)):,} nodes "
        f"in {time.perf_counter() - t:.1f} s"
    )


def proof_latency(size: int, samples: int) -> dict[str, float]:
    """Inclusion proofs through the repository (one node query), and through the log service."""
    from broker import db
    from broker.audit import log, repository
    from broker.crypto import merkle

    rng = random.Random(size)
    repo_ms: list[float] = []
    service_ms: list[float] = []
    reads: list[int] = []

    async def measure(s: AsyncSession) -> None:
        for _ in range(50):  # warm the cache and the connection
            await log.inclusion(s, rng.randrange(size), size)
        for _ in range(samples):
            index = rng.randrange(size)
            t = time.perf_counter()
            keys = merkle.inclusion_proof_keys(index, size)
            nodes = await repository.get_nodes(s, keys)
            proof = merkle.inclusion_proof(index, size, nodes)
            repo_ms.append((time.perf_counter() - t) * 1000)
            reads.append(len(proof))
            t = time.perf_counter()
            await log.inclusion(s, index, None)
            service_ms.append((time.perf_counter() - t) * 1000)

    db.call(measure)
    return {
        "size": size,
        "repo_p50": statistics.median(repo_ms),
        "repo_p99": statistics.quantiles(repo_ms, n=100)[98],
        "service_p50": statistics.median(service_ms),
        "service_p99": statistics.quantiles(service_ms, n=100)[98],
        "hashes": statistics.mean(reads),
    }


def merge_delay(seconds: float, rate: float) -> dict[str, float]:
    """Events committed at `rate`/s while the embedded ticker runs; commit -> signed checkpoint."""
    from broker import db, ticker
    from broker.audit import jobs, service
    from broker.audit.models import AuditEvent, Checkpoint

    reset_log()
    jobs.install()
    worker = ticker.Ticker()
    worker.start()
    committed: dict[uuid.UUID, float] = {}
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            event = db.call(service.record, "bench.probe", actor="bench", details={"n": 1})
            committed[event.id] = time.time()
            time.sleep(1 / rate)
        time.sleep(1.5)
    finally:
        worker.stop()

    async def read(s: AsyncSession) -> tuple[list[tuple[int, float]], dict[uuid.UUID, int | None]]:
        checkpoints = await s.scalars(select(Checkpoint).order_by(Checkpoint.size))
        heads = [(c.size, c.created_at.timestamp()) for c in checkpoints]
        indexes = {e.id: e.leaf_index for e in await s.scalars(select(AuditEvent))}
        return heads, indexes

    heads, indexes = db.call(read)
    delays = []
    for eid, at in committed.items():
        index = indexes[eid]
        assert index is not None, "an event was never sequenced"
        signed = next(ts for size, ts in heads if size > index)
        delays.append((signed - at) * 1000)
    return {
        "events": len(delays),
        "p50": statistics.median(delays),
        "p99": statistics.quantiles(delays, n=100)[98],
        "max": max(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--delay-seconds", type=float, default=10.0)
    parser.add_argument("--delay-rate", type=float, default=200.0)
    args = parser.parse_args()
    url = setup_database()
    print(f"log bench on {make_url(url).render_as_string(hide_password=True)}")
    load = os.getloadavg()[0]
    print(f"   {os.cpu_count()} CPUs, load average {load:.1f} at start")
    with psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    ) as c:
        print("  ", c.execute("select version()").fetchone()[0][:60])  # type: ignore[index]

    print("\n1. sequencer throughput")
    seq = sequencer_throughput(args.events)
    ceiling = plain_insert_ceiling(args.events)
    ceiling.update({f"cpu_{k}": v for k, v in cpu_floor(args.events).items()})
    print(f"   {'what':<52}{'events/s':>12}{'ratio':>9}")
    print(
        f"   {'sequencer (batches of 5,000, 1 checkpoint each)':<52}{seq['rate']:>12,.0f}{'1.00':>9}"
    )
    for label, key in (
        ("ceiling: plain INSERT of the same leaf rows", "leaves_rate"),
        ("ceiling: plain INSERT of leaf rows + node rows", "leaves_nodes_rate"),
        ("ceiling: plain COPY of leaf rows + node rows", "copy_rate"),
        ("ceiling: leaf bytes + hash in Python, no database", "cpu_leaves_rate"),
        ("baseline: raw SHA-256 of the same leaf bytes", "cpu_sha256_rate"),
    ):
        print(f"   {label:<52}{ceiling[key]:>12,.0f}{ceiling[key] / seq['rate']:>8.2f}x")
    print(f"   target 10,000 events/s: {'met' if seq['rate'] >= 10_000 else 'NOT met'}")
    print(f"   where a {args.events:,}-event run's {seq['seconds']:.2f} s go:")
    for k, v in sorted(seq.items()):
        if k.startswith("phase:"):
            print(f"     {k[6:]:<50}{v:>8.3f} s {v / seq['seconds']:>6.1%}")
    print(f"     {'commit':<50}{seq['commit']:>8.3f} s {seq['commit'] / seq['seconds']:>6.1%}")

    print("\n2. inclusion-proof latency (ms)")
    rows = []
    for size in (1_000, args.big):
        bulk_load(size)
        rows.append(proof_latency(size, args.samples))
    print(
        f"   {'leaves':>11}{'hashes':>8}{'repo p50':>10}{'repo p99':>10}{'api-svc p50':>13}{'api-svc p99':>13}"
    )
    for r in rows:
        print(
            f"   {r['size']:>11,}{r['hashes']:>8.1f}{r['repo_p50']:>10.3f}{r['repo_p99']:>10.3f}"
            f"{r['service_p50']:>13.3f}{r['service_p99']:>13.3f}"
        )
    small, big = rows
    print(
        f"   ratio {big['size'] // small['size']:,}x leaves -> p50 x{big['repo_p50'] / small['repo_p50']:.2f}, "
        f"p99 x{big['repo_p99'] / small['repo_p99']:.2f} (repository); target < 5 ms: "
        f"{'met' if big['repo_p99'] < 5 else 'NOT met'} (repository p99 at {big['size']:,})"
    )

    print("\n3. merge delay with the embedded ticker (ms, commit -> signed checkpoint)")
    delay = merge_delay(args.delay_seconds, args.delay_rate)
    print(
        f"   {delay['events']:,} events at ~{args.delay_rate:.0f}/s: p50 {delay['p50']:.0f}, "
        f"p99 {delay['p99']:.0f}, max {delay['max']:.0f}; target p99 < 1000: "
        f"{'met' if delay['p99'] < 1000 else 'NOT met'}"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(__file__).parent / "results" / f"log-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "load_at_start": load,
                "throughput": seq,
                "ceilings": ceiling,
                "proof_latency_ms": rows,
                "merge_delay_ms": delay,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
