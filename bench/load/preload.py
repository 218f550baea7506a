"""Bulk pre-load, and the same figures at two stored sizes (1 thousand, then 1 million messages).

The pre-load bypasses the API: it copies one real accepted alert (a 3-recipient, 4 KB
envelope the broker stored) into `n` message rows with new ids and mids, each with 3
deliveries spread over the other parties, already acknowledged (history, not backlog), with
inbox sequence numbers continuing each agency's counter, in batches of `BATCH` rows per
transaction (`INSERT ... SELECT generate_series`, server side, `synchronous_commit=off` for
this session only), then ANALYZE and a CHECKPOINT so that the timed phase does not pay for
flushing it. The recipients' cursors are then moved past the history, as partners that have
read it would be. The log is not pre-loaded (only the messages and deliveries).

`size` mode, per size: top up the store to the size, then (1) the closed-loop submit rate
(3-recipient alerts, `--peer-clients` x 4 connections, `--size-seconds` / 2) and (2) an
open-loop phase at `--size-rate` for `--size-seconds` with every recipient polling (poll,
accept-to-inbox and submit latencies). Target: figures at the large size within 20 % of the
small size's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import uvloop

from . import report
from .peer import _closed
from .stack import Actors, Stack
from .traffic import Mix, plan

BATCH = 50_000


def _engine(db: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}")


def stored(db: str) -> int:
    from sqlalchemy import text

    with _engine(db).connect() as conn:
        return int(conn.execute(text("select count(*) from messages")).scalar_one())


def bulk_load(db: str, parties: list[str], n: int) -> dict[str, Any]:
    """Add `n` messages (3 deliveries each) copied from a real 3-recipient alert."""
    from sqlalchemy import text

    from broker.messages.models import Message

    t0 = time.monotonic()
    engine = _engine(db)
    cols = [c.name for c in Message.__table__.columns]
    fresh = {"id": "i.id", "mid": "gen_random_uuid()", "event_id": "gen_random_uuid()",
             "received_at": "t.received_at - make_interval(secs => i.k)"}  # fmt: skip
    select_cols = ", ".join(fresh.get(c, f"t.{c}") for c in cols)
    done = 0
    with engine.begin() as conn:
        template = conn.execute(
            text(
                "select m.id, m.sender from messages m"
                " where (select count(*) from deliveries d where d.message_id = m.id) = 3"
                " and m.kind = 'alert' order by m.received_at desc limit 1"
            )
        ).first()
        if template is None:
            raise RuntimeError("no 3-recipient alert stored yet to copy")
        (k0,) = conn.execute(text("select count(*) from messages")).one()
    tid, sender = template
    others = [p for p in parties if p != sender]
    while done < n:
        size = min(BATCH, n - done)
        with engine.begin() as conn:
            conn.execute(text("set local synchronous_commit = off"))
            conn.execute(
                text(
                    "create temp table preload_ids on commit drop as"
                    " select gen_random_uuid() as id, k"
                    " from generate_series(cast(:a as bigint), cast(:b as bigint)) as k"
                ),
                {"a": k0 + done + 1, "b": k0 + done + size},
            )
            conn.execute(
                text(
                    f"insert into messages ({', '.join(cols)})"
                    f" select {select_cols} from preload_ids i, messages t where t.id = :tid"
                ),
                {"tid": tid},
            )
            # 3 recipients per message, round robin over the other parties.
            conn.execute(
                text(
                    "create temp table preload_d on commit drop as"
                    " select i.id as message_id, i.k,"
                    " (cast(:others as text[]))[1 + ((i.k + j) % :n)] as recipient"
                    " from preload_ids i, generate_series(0, 2) as j"
                ),
                {"others": others, "n": len(others)},
            )
            conn.execute(
                text(
                    "insert into inbox_counters (agency_id, next_seq)"
                    " select distinct recipient, 1 from preload_d"
                    " on conflict (agency_id) do nothing"
                )
            )
            conn.execute(
                text(
                    "insert into deliveries (id, message_id, recipient, state, inbox_seq,"
                    " created_at, available_at, fetched_at, acked_at, ack_status)"
                    " select gen_random_uuid(), d.message_id, d.recipient, 'acknowledged',"
                    " c.next_seq - 1 + row_number() over (partition by d.recipient order by d.k),"
                    " m.received_at, m.received_at, m.received_at, m.received_at, 'decrypted'"
                    " from preload_d d join inbox_counters c on c.agency_id = d.recipient"
                    " join messages m on m.id = d.message_id"
                )
            )
            conn.execute(
                text(
                    "update inbox_counters c set next_seq = c.next_seq + x.n"
                    " from (select recipient, count(*) as n from preload_d group by recipient) x"
                    " where c.agency_id = x.recipient"
                )
            )
        done += size
        print(f"  pre-loaded {done}/{n} ({time.monotonic() - t0:.0f} s)", flush=True)
    with engine.connect() as conn:
        conn.execute(text("analyze messages"))
        conn.execute(text("analyze deliveries"))
        conn.commit()
        # Flush the pre-load's dirty pages now rather than during the timed phase.
        conn.execute(text("checkpoint"))
        conn.commit()
    engine.dispose()
    seconds = time.monotonic() - t0
    return {"added": n, "seconds": round(seconds, 1), "rows_per_s": round(n / seconds, 1)}


def inbox_ends(db: str) -> dict[str, str]:
    from sqlalchemy import text

    with _engine(db).connect() as conn:
        rows = conn.execute(text("select agency_id, next_seq - 1 from inbox_counters")).all()
    return {a: str(s) for a, s in rows if s > 0}


def by_size(
    args: Any,
    stack: Stack,
    actors: Actors,
    pool: ProcessPoolExecutor,
    phase: Callable[..., dict[str, Any]],
    receivers: Any,
) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, Any] = {"sizes": {}, "outside_phases": 0, "preloaded_total": 0}
    extra: set[str] = set()
    # A few real alerts first: the template to copy, and the receivers' first cursors.
    phase("warmup", [(min(args.size_rate, 20.0), args.warmup_seconds)], seed=0)
    for size in sizes:
        have = stored(stack.db)
        if size > have:
            print(f"pre-loading {size - have} messages ...", flush=True)
            load = bulk_load(stack.db, actors.world.parties, size - have)
            out["preloaded_total"] += size - have
        else:
            load = {"added": 0}
        # Partners have read the history: their cursors move to the end of their inboxes.
        receivers.cursors.update(inbox_ends(stack.db))
        secs = args.size_seconds
        planned = plan(pool, actors, stack.port, [(400.0, secs / 2)], Mix(0, 1, 0, 0), seed=size)
        conns = 4 * args.peer_clients
        closed = uvloop.run(
            _closed(
                stack.port,
                lambda i, p=planned: p.requests[i] if i < len(p.requests) else None,
                conns,
                secs / 2,
            )
        )
        out["outside_phases"] += closed["ok"]
        extra.update(planned.mids)
        print(f"  {size}: closed-loop submits {closed['per_s']}/s", flush=True)
        # Those deliveries are not part of the timed phase: once relayed, the partners'
        # cursors skip them (they stay unacknowledged, outside the checks).
        _wait_relayed(stack.db)
        time.sleep(2.0)  # the phase's drain counts deliveries created after it starts
        receivers.cursors.update(inbox_ends(stack.db))
        receivers.acks.update(planned.acks)
        receivers.shas.update(planned.envelope_sha)
        ph = phase(f"size-{size}", [(args.size_rate, secs)], seed=size + 1)
        m = report.summarize(ph, secs)
        out["sizes"][str(size)] = {
            "stored_before": size,
            "preload": load,
            "closed_submit_per_s": closed["per_s"],
            "closed_submit_ms": {"p50": closed["p50_ms"], "p99": closed["p99_ms"]},
            "open": {
                "rate": args.size_rate,
                "submit_ms": m["submit_ms"],
                "poll_page_ms": m["poll_page_ms"],
                "accept_to_inbox_ms": m["accept_to_inbox_ms"],
                "ack_ms": m["ack_ms"],
                "errors": m["errors"],
            },
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    out["extra_mids"] = extra
    if len(sizes) >= 2:
        small, large = out["sizes"][str(sizes[0])], out["sizes"][str(sizes[-1])]
        out["submit_rate_ratio"] = round(
            large["closed_submit_per_s"] / max(small["closed_submit_per_s"], 1e-9), 2
        )
        for key in ("p50", "p99"):
            a = small["open"]["poll_page_ms"][key] or 0
            b = large["open"]["poll_page_ms"][key] or 0
            out[f"poll_{key}_ratio"] = round(b / a, 2) if a else None
        out["within_20pct"] = (
            out["submit_rate_ratio"] >= 0.8 and (out["poll_p99_ratio"] or 9) <= 1.2
        )
    return out


def _wait_relayed(db: str, timeout: float = 300.0) -> None:
    """Until no delivery is still queued (the relay has made every one available)."""
    from sqlalchemy import text

    engine = _engine(db)
    end = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < end:
            n = conn.execute(
                text("select count(*) from deliveries where state = 'queued'")
            ).scalar()
            conn.commit()
            if not n:
                break
            time.sleep(0.5)
    engine.dispose()
