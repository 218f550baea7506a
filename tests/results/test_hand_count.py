"""Statistics equal a hand count over 1,000 feedback messages across two operations.

The test keeps what it generated (sender, recipient, instant, outcome, commodity, band, the
alert's operation) and counts it itself: every group and every rollup of the API, every row of
the CSV, for all phases and each phase, for the coordinator and for a bound auditor; then each
rollup's figure listed message by message, and the log leaves behind them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from tests.audit import rfc9162
from tests.audit.conftest import sequence_all
from tests.results.conftest import ALPHA, BRAVO, Scene, Sent, generate, token

N = 1000
DIMENSIONS = ("phase", "week", "agency", "outcome", "commodity", "quantity_band")


def phase_of(scene: Scene, op: str, at: datetime) -> str | None:
    for p in scene.operations[op]["phases"]:
        starts = datetime.fromisoformat(p["starts_at"])
        ends = datetime.fromisoformat(p["ends_at"])
        if starts <= at < ends:
            return str(p["name"])
    return None


def week_of(at: datetime) -> str:
    year, week, _ = at.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def key(scene: Scene, f: Sent) -> tuple[Any, ...]:
    assert f.operation is not None
    return (
        phase_of(scene, f.operation, f.at),
        week_of(f.at),
        f.sender,
        f.outcome,
        f.commodity,
        f.quantity_band,
    )


def hand_count(
    scene: Scene, op: str, *, phase: str | None = "*", visible: set[str] | None = None
) -> Counter[tuple[Any, ...]]:
    counts: Counter[tuple[Any, ...]] = Counter()
    for f in scene.feedback:
        if f.operation != op:
            continue
        if visible is not None and not ({f.sender, f.recipient} & visible):
            continue
        k = key(scene, f)
        if phase != "*" and k[0] != phase:
            continue
        counts[k] += 1
    return counts


def api_groups(body: dict[str, Any]) -> Counter[tuple[Any, ...]]:
    return Counter({tuple(g[d] for d in DIMENSIONS): g["count"] for g in body["groups"]})


def rollups(counts: Counter[tuple[Any, ...]]) -> dict[str, dict[Any, int]]:
    out: dict[str, dict[Any, int]] = {}
    for i, d in enumerate(DIMENSIONS):
        c: Counter[Any] = Counter()
        for k, n in counts.items():
            c[k[i]] += n
        out[d] = dict(c)
    return out


def check_results(
    client: Any, headers: dict[str, str], scene: Scene, op: str, expected: Counter[Any], **q: str
) -> dict[str, Any]:
    r = client.get(f"/v1/operations/{op}/results", params=q, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == sum(expected.values())
    assert api_groups(body) == expected
    for d, values in rollups(expected).items():
        assert {x["value"]: x["count"] for x in body[f"by_{d}"]} == values, d
    # The CSV holds the same groups, absent values spelled `outside` and `none`.
    r = client.get(f"/v1/operations/{op}/results.csv", params=q, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    spelled = {"phase": "outside", "commodity": "none", "quantity_band": "none"}
    from_csv = Counter(
        {
            tuple(None if row[d] == spelled.get(d) else row[d] for d in DIMENSIONS): int(
                row["count"]
            )
            for row in rows
        }
    )
    assert from_csv == expected
    return body


def test_statistics_equal_a_hand_count(scene: Scene) -> None:
    client = scene.exchange.client
    generate(scene, N)
    assert len(scene.feedback) == N
    assert {f.operation for f in scene.feedback} == {ALPHA, BRAVO}
    coordinator = {ALPHA: token(scene, "agency", agency_id="VN-GDC")}
    coordinator[BRAVO] = token(scene, "focal_point", focal_point_id="KR-KCS/fp-01")
    everyone = token(scene, "auditor")
    for op in (ALPHA, BRAVO):
        for who in (coordinator[op], everyone):
            body = check_results(client, who, scene, op, hand_count(scene, op))
            assert body["agencies"] is None
        # Each phase, and outside every phase.
        phases = [p["name"] for p in scene.operations[op]["phases"]]
        for phase in [*phases, "outside"]:
            expected = hand_count(scene, op, phase=None if phase == "outside" else phase)
            assert expected, f"no feedback generated in {op} {phase}"
            check_results(client, coordinator[op], scene, op, expected, phase=phase)
    # An auditor of TH-CUS and KR-KCS counts the feedback sent by or to them only.
    bound = token(scene, "auditor", audit_agencies=["TH-CUS", "KR-KCS"])
    for op in (ALPHA, BRAVO):
        expected = hand_count(scene, op, visible={"TH-CUS", "KR-KCS"})
        assert sum(expected.values()) > 0
        body = check_results(client, bound, scene, op, expected)
        assert body["agencies"] == ["KR-KCS", "TH-CUS"]
    check_traceability(scene, everyone)


def check_traceability(scene: Scene, auditor: dict[str, str]) -> None:
    """Each rollup figure's feedback list is the messages counted; their leaves are logged."""
    client = scene.exchange.client
    by_mid = {f.mid: f for f in scene.feedback}
    listed: dict[str, dict[str, Any]] = {}
    for op in (ALPHA, BRAVO):
        counts = hand_count(scene, op)
        for i, d in enumerate(DIMENSIONS):
            values: Counter[Any] = Counter()
            for k, n in counts.items():
                values[k[i]] += n
            for value, n in values.items():
                spelled = value if value is not None else ("outside" if d == "phase" else "none")
                items = feedback_list(client, auditor, op, {d: spelled}, limit=150)
                assert len(items) == n, (op, d, value)
                for item in items:
                    f = by_mid[item["mid"]]
                    assert key(scene, f)[i] == value
                    assert f.operation == op
                    listed[item["mid"]] = item
        # One full figure: every dimension at once.
        (k, n), *_ = counts.most_common(1)
        figure = dict(zip(DIMENSIONS, k, strict=True))
        query = {
            d: v if v is not None else ("outside" if d == "phase" else "none")
            for d, v in figure.items()
        }
        assert len(feedback_list(client, auditor, op, query, limit=100)) == n
    assert set(listed) == set(by_mid)
    for mid, item in listed.items():
        f = by_mid[mid]
        assert (item["sender"], item["recipient"]) == (f.sender, f.recipient)
        assert datetime.fromisoformat(item["accepted_at"]) == f.at
    # The leaves: every listed message's `msg.accepted` event, in the signed tree.
    sequence_all()
    still = feedback_list(client, auditor, ALPHA, {}, limit=1000)
    still += feedback_list(client, auditor, BRAVO, {}, limit=1000)
    assert all(x["leaf_index"] is not None for x in still)
    leaves = all_leaves(client, auditor)
    hashes = [rfc9162.leaf_hash(base64.b64decode(x["leaf"])) for x in leaves]
    size = len(hashes)
    for item in still:
        leaf = json.loads(base64.b64decode(leaves[item["leaf_index"]]["leaf"]))
        assert leaf["kind"] == "msg.accepted"
        f = by_mid[item["mid"]]
        assert leaf["index"] == item["leaf_index"]
        assert (leaf["mid"], leaf["sender"], leaf["outcome"]) == (f.mid, f.sender, f.outcome)
        assert leaf["ts"] == int(by_mid[item["mid"]].at.timestamp() * 1000)
    for item in still[:: max(len(still) // 12, 1)]:
        index = item["leaf_index"]
        proof = client.get(
            "/v1/log/proof/inclusion", params={"index": index, "size": size}, headers=auditor
        ).json()
        root = rfc9162.mth(hashes)
        assert base64.b64decode(proof["root"]) == root
        assert rfc9162.verify_inclusion(
            hashes[index], index, size, [base64.b64decode(p) for p in proof["proof"]], root
        )


def feedback_list(
    client: Any, headers: dict[str, str], op: str, query: dict[str, str], *, limit: int
) -> list[dict[str, Any]]:
    """Every item of a figure's feedback list, following the cursor; the total agrees."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    total = None
    while True:
        params = {**query, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/v1/operations/{op}/results/feedback", params=params, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        total = body["total"] if total is None else total
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(items) == total
    assert len({x["mid"] for x in items}) == len(items)
    return items


def all_leaves(client: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every leaf of the tree of the latest checkpoint (the caller sees them all)."""
    out: list[dict[str, Any]] = []
    start, end = 0, None
    while True:
        params = {"start": start, **({"end": end} if end is not None else {})}
        page = client.get("/v1/log/leaves", params=params, headers=headers).json()
        end = page["tree_size"] if end is None else end
        out += page["leaves"]
        if page["next"] is None:
            assert [x["index"] for x in out] == list(range(end))
            return out
        start = page["next"]
