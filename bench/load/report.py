"""Figures from the raw records: percentiles, rates, checks; the human table; the PNG plot."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.submit_bench import ROOT

PEER_PYTHON = ROOT / "bench/.peer-venv/bin/python"


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def dist(values_s: Sequence[float]) -> dict[str, Any]:
    """Percentiles in milliseconds of values in seconds."""
    ms = [v * 1000 for v in values_s]
    out: dict[str, Any] = {"n": len(ms)}
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        v = pct(ms, q)
        out[name] = None if v is None else round(v, 1)
    out["max"] = round(max(ms), 1) if ms else None
    return out


def classify(kind: str, status: int) -> str:
    """accepted | refused (an out-of-scope attempt answered 4xx, as it should) | error."""
    if kind == "oos":
        return "refused" if 400 <= status < 500 else "error"
    return "accepted" if status == 201 else "error"


def summarize(ph: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One phase (or one step): rates, latencies, errors, CPU."""
    planned = ph["planned"]
    recs = ph["submit"]["records"]
    statuses = Counter(s for _, s, _, _ in recs)
    classes = Counter(classify(planned.kinds[i], s) for i, s, _, _ in recs)
    by_kind: dict[str, list[float]] = {}
    for i, s, lat, _ in recs:
        if classify(planned.kinds[i], s) != "error":
            by_kind.setdefault(planned.kinds[i], []).append(lat)
    lat_all = [lat for _, _, lat, _ in recs]
    lat_ok = [lat for i, s, lat, _ in recs if classify(planned.kinds[i], s) == "accepted"]
    first_seen: dict[tuple[str, str], tuple[float, float]] = {}
    for r in ph["receivers"]:
        for agency, mid, _seq, received, at in r["seen"]:
            first_seen.setdefault((agency, mid), (received, at))
    a2i = [at - rec for rec, at in first_seen.values()]
    polls = [p for r in ph["receivers"] for p in r["polls"]]
    page_polls = [d for _, kind, st, d, _ in polls if kind == "page" and st == 200]
    long_polls = [(d, n) for _, kind, st, d, n in polls if kind == "long" and st == 200]
    poll_status = Counter(st for _, _, st, _, _ in polls)
    acks = [a for r in ph["receivers"] for a in r["acks"]]
    ack_status = Counter(st for _, st, _ in acks)
    audit = ph["submit"]["audit"]["records"]
    audit_status = Counter(st for _, st, _, _ in audit)
    all_status = statuses + poll_status + ack_status + audit_status
    fivexx = sum(n for st, n in all_status.items() if st >= 500)
    sent = len(recs)
    drain = None
    if ph.get("drained_at"):
        drain = round(ph["drained_at"] - ph["offered_end"], 2)
    return {
        "offered": sent,
        "offered_per_s": round(sent / seconds, 1) if seconds else None,
        "accepted": classes["accepted"],
        "accepted_per_s": round(classes["accepted"] / seconds, 1) if seconds else None,
        "refused_out_of_scope": classes["refused"],
        "errors": classes["error"],
        "error_rate": round(classes["error"] / sent, 5) if sent else 0.0,
        "statuses": dict(statuses),
        "error_bodies": ph["submit"].get("error_bodies", {}),
        "late_sends": ph["submit"]["late_sends"],
        "reconnects": ph["submit"]["retries"],
        "submit_ms": dist(lat_all),
        "submit_accepted_ms": dist(lat_ok),
        "submit_by_kind_ms": {k: dist(v) for k, v in sorted(by_kind.items())},
        "deliveries_seen": len(first_seen),
        "deliveries_per_s": round(len(first_seen) / seconds, 1) if seconds else None,
        "accept_to_inbox_ms": dist(a2i),
        "poll_page_ms": dist(page_polls),
        "long_polls": len(long_polls),
        "long_polls_with_items": sum(1 for _, n in long_polls if n),
        "poll_statuses": dict(poll_status),
        "ack_ms": dist([d for _, st, d in acks if st == 200]),
        "ack_statuses": dict(ack_status),
        "audit_page_ms": dist([d for _, st, d, _ in audit if st == 200]),
        "audit_pages": len(audit),
        "audit_statuses": dict(audit_status),
        "http_5xx": fivexx,
        "receiver_problems": [p for r in ph["receivers"] for p in r.get("problems", [])][:20],
        "opened": sum(r.get("opened", 0) for r in ph["receivers"]),
        "drain_s": drain,
        "cpu_s": ph.get("cpu"),
    }


def per_second(ph: dict[str, Any], origin: float) -> dict[str, list[Any]]:
    """Accepted per second (by answer time) and deliveries seen per second, from `origin`."""
    planned = ph["planned"]
    acc: Counter[int] = Counter()
    for i, s, _, done in ph["submit"]["records"]:
        if classify(planned.kinds[i], s) == "accepted":
            acc[int(done - origin)] += 1
    seen: Counter[int] = Counter()
    for r in ph["receivers"]:
        for *_, at in r["seen"]:
            seen[int(at - origin)] += 1
    keys = sorted(set(acc) | set(seen))
    return {
        "t": keys,
        "accepted": [acc.get(k, 0) for k in keys],
        "delivered": [seen.get(k, 0) for k in keys],
    }


def memory_slope(samples: Sequence[dict[str, Any]], start_s: float) -> dict[str, Any]:
    """Per broker process: RSS, fds and threads at `start_s` and at the end; growth in %."""
    if not samples:
        return {}
    later = [s for s in samples if s["t"] >= start_s] or samples[-1:]
    first, last = later[0], samples[-1]
    out = {}
    for key, v in last.items():
        if not isinstance(v, dict):
            continue
        a = first.get(key)
        if not isinstance(a, dict):
            continue
        pts = [(s["t"], s[key]["rss_mib"]) for s in later if isinstance(s.get(key), dict)]
        out[key] = {
            "rss_slope_mib_per_h": _slope(pts),
            "rss_mib": [a["rss_mib"], v["rss_mib"]],
            "rss_growth_pct": round(100 * (v["rss_mib"] - a["rss_mib"]) / a["rss_mib"], 1)
            if a["rss_mib"]
            else None,
            "fds": [a["fds"], v["fds"]],
            "threads": [a["threads"], v["threads"]],
            "from_t": first["t"],
            "to_t": last["t"],
        }
    return out


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB), in MiB per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if not var:
        return None
    return round(3600 * sum((t - mx) * (y - my) for t, y in points) / var, 2)


def cpu_split(cpu: dict[str, float]) -> dict[str, float]:
    broker = cpu.get("api", 0) + cpu.get("celery_worker", 0) + cpu.get("celery_beat", 0)
    clients = (
        cpu.get("clients_submitter_auditor", 0)
        + cpu.get("clients_receivers", 0)
        + cpu.get("clients_parent", 0)
    )
    ours = broker + cpu.get("postgres_backends", 0) + cpu.get("redis_server", 0) + clients
    wall = cpu.get("wall", 0) or 1
    return {
        "broker_processes_s": round(broker, 1),
        "postgres_backends_s": round(cpu.get("postgres_backends", 0), 1),
        "redis_server_s": round(cpu.get("redis_server", 0), 1),
        "clients_s": round(clients, 1),
        "box_busy_s": round(cpu.get("box_busy", 0), 1),
        "other_work_on_box_s": round(max(0.0, cpu.get("box_busy", 0) - ours), 1),
        "wall_s": round(wall, 1),
        "broker_cores": round(broker / wall, 2),
        "clients_cores": round(clients / wall, 2),
    }


# --- human output ---------------------------------------------------------------------------


def _d(d: dict[str, Any] | None) -> str:
    if not d or d.get("n", 0) == 0:
        return "-"
    return f"{d['p50']} / {d['p95']} / {d['p99']}"


def print_table(result: dict[str, Any]) -> None:
    print(f"\n== load {result['mode']}  (load average {result['load_average']})")
    if result.get("steps"):
        print(
            f"{'step rate':>9} {'acc/s':>7} {'dlv/s':>7} {'err%':>6} "
            f"{'submit p50/p95/p99':>22} {'accept->inbox p50/p95/p99':>27} {'load':>5}"
        )
        for s in result["steps"]:
            m = s["summary"]
            print(
                f"{s['rate']:>9} {m['accepted_per_s']:>7} {m['deliveries_per_s']:>7} "
                f"{100 * m['error_rate']:>6.2f} {_d(m['submit_ms']):>22} "
                f"{_d(m['accept_to_inbox_ms']):>27} {s['load_average'][0]:>5}"
            )
        print(f"knee: {result.get('knee')}  ({result.get('knee_rule')})")
    for name, m in result.get("phases", {}).items():
        print(
            f"\n-- {name}: offered {m['offered_per_s']}/s, accepted {m['accepted_per_s']}/s,"
            f" deliveries {m['deliveries_per_s']}/s, errors {m['errors']}"
            f" ({100 * m['error_rate']:.2f} %), 5xx {m['http_5xx']}, drain {m['drain_s']} s"
        )
        rows = [
            ("submit (all, from scheduled time)", m["submit_ms"]),
            ("accept -> inbox (seen by long-poll)", m["accept_to_inbox_ms"]),
            ("poll page (wait=0)", m["poll_page_ms"]),
            ("ack", m["ack_ms"]),
            ("audit page", m["audit_page_ms"]),
        ]
        for k, d in m["submit_by_kind_ms"].items():
            rows.append((f"  submit {k}", d))
        print(f"   {'ms':38} {'n':>7}  p50 / p95 / p99")
        for label, d in rows:
            print(f"   {label:38} {d['n']:>7}  {_d(d)}")
    if result.get("cpu_split"):
        print(f"\ncpu split: {json.dumps(result['cpu_split'])}")
    if result.get("memory"):
        worst = max((v["rss_growth_pct"] or 0 for v in result["memory"].values()), default=0.0)
        print(f"memory: worst RSS growth {worst} % over the window; per process in the JSON")
    if result.get("peer"):
        p = result["peer"]
        print("\n-- side by side with medallion (same generator, 4 KB objects)")
        for k in ("medallion", "ours"):
            v = p[k]
            print(
                f"   {k:10} posted {v['post']['per_s']:>8}/s (p50/p99 {v['post']['p50_ms']} /"
                f" {v['post']['p99_ms']} ms)   polled {v['poll']['objects_per_s']:>8} objects/s"
                f" ({v['poll']['pages_per_s']} pages/s of {p['page']})"
            )
        print(
            f"   ratios: posts {p['ratio_posts']}x (target >= 10), polled {p['ratio_polled']}x"
            f" (target >= 20)"
        )
        if p.get("plumbing"):
            pl = p["plumbing"]
            print(
                f"   plumbing   posted {pl['post']['per_s']:>8}/s   polled"
                f" {pl['poll']['objects_per_s']:>8} objects/s   ours of plumbing: posts"
                f" {p['ours_of_plumbing_posts']:.0%}, polled {p['ours_of_plumbing_polled']:.0%}"
            )
    if result.get("size"):
        print("\n-- size: " + json.dumps(result["size"]))
    stages = result.get("checks", {}).pop("stages_ms_p50_p95_p99", None)
    if stages:
        result["stages_ms_p50_p95_p99"] = stages
        print(f"stages (broker timestamps, ms p50/p95/p99): {json.dumps(stages)}")
    print(f"\nchecks: {json.dumps(result['checks'])}")


PLOT = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open(sys.argv[1]))
steps = r["steps"]
rates = [s["rate"] for s in steps]
fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(9, 10))
a1.plot(rates, rates, "k:", label="offered")
a1.plot(rates, [s["summary"]["accepted_per_s"] for s in steps], "o-", label="accepted/s")
a1.plot(rates, [s["summary"]["deliveries_per_s"] for s in steps], "s-", label="deliveries/s")
a1.set_xlabel("offered submits/s"); a1.set_ylabel("per second"); a1.legend(); a1.grid(alpha=.3)
for key, lab in (("submit_ms", "submit"), ("accept_to_inbox_ms", "accept->inbox")):
    for q, st in (("p50", "--"), ("p99", "-")):
        a2.plot(rates, [s["summary"][key][q] or 0 for s in steps], st, marker="o", label=f"{lab} {q}")
a2.axhline(100, color="r", lw=.8); a2.set_yscale("log")
a2.set_xlabel("offered submits/s"); a2.set_ylabel("ms"); a2.legend(fontsize=8); a2.grid(alpha=.3)
if r.get("knee"):
    for a in (a1, a2): a.axvline(r["knee"], color="r", ls=":")
tl = r.get("timeline", {})
if tl.get("t"):
    a3.plot(tl["t"], tl["accepted"], label="accepted/s")
    a3.plot(tl["t"], tl["delivered"], label="deliveries seen/s", alpha=.7)
    a3.set_xlabel("seconds since the step test started"); a3.legend(); a3.grid(alpha=.3)
fig.suptitle(f"load step test {r['started']} (load average {r['load_average']['start']})")
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=90)
"""


def plot(json_path: Path, png_path: Path) -> str | None:
    """Plot the step test with the peer venv's matplotlib (not a project dependency)."""
    if not PEER_PYTHON.exists():
        return "bench/.peer-venv missing: see bench/load/__init__.py (or run the peer mode)"
    proc = subprocess.run(
        [str(PEER_PYTHON), "-c", PLOT, str(json_path), str(png_path)],
        capture_output=True,
        text=True,
    )
    return None if proc.returncode == 0 else proc.stderr[-800:]
