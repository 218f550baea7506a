"""`broker audit verify`: tampering behind the service's back, and split views, are caught."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from broker import db, keyring
from broker.audit import leaf, repository, sequencer, verify
from broker.audit.models import AuditEvent, Checkpoint, LogLeaf, LogNode
from broker.cli.main import app as cli
from broker.crypto import merkle, note
from tests.audit.conftest import execute, record, rows, scalar, sequence_all

runner = CliRunner()


class Borrowed:
    """The test client lent to the CLI, which must not close it (the `api` fixture does)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __enter__(self) -> Any:
        return self.client

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def auditor(api: Any, world: dict[str, Any], token_for: Any, monkeypatch: Any) -> str:
    """An oversight auditor's token; the CLI talks to the app through the test client."""
    monkeypatch.setattr(verify, "open_http", lambda base_url: Borrowed(api))
    token = token_for("auditor")
    record(40)
    sequence_all()
    return token


def run(token: str, log_key: str, *args: str) -> Any:
    return runner.invoke(
        cli,
        [
            "audit",
            "verify",
            "--url",
            "http://testserver",
            "--token",
            token,
            "--log-key",
            log_key,
            *list(args),
        ],
    )


def _size() -> int:
    return int(scalar(select(Checkpoint.size).order_by(Checkpoint.size.desc()).limit(1)) or 0)


def test_a_sound_log_verifies(auditor: str, log_key: str, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    result = run(auditor, log_key, "--full", "--state", str(state), "--index", "7")
    assert result.exit_code == 0, result.output
    assert "signature OK" in result.output
    assert "leaf 7 is included" in result.output
    assert f"full: {_size()} leaves reproduce the root" in result.output
    stored = json.loads(state.read_text())["checkpoint"]
    record(5)
    sequence_all()
    again = run(auditor, log_key, "--state", str(state))
    assert again.exit_code == 0, again.output
    assert "consistent with the stored checkpoint" in again.output
    assert json.loads(state.read_text())["checkpoint"] != stored


def _swap_leaves(a: int, b: int) -> None:
    found = {
        i: (data, digest)
        for i, data, digest in rows(
            select(LogLeaf.index, LogLeaf.leaf_bytes, LogLeaf.leaf_hash).where(
                LogLeaf.index.in_([a, b])
            )
        )
    }
    for i, j in ((a, b), (b, a)):
        execute(
            update(LogLeaf)
            .where(LogLeaf.index == i)
            .values(leaf_bytes=found[j][0], leaf_hash=found[j][1])
        )


def _renumber_leaves(a: int, b: int) -> None:
    """Swap the primary keys of two leaf rows (their bytes and hashes move with them)."""

    async def renumber(s: AsyncSession) -> None:
        for old, new in ((a, -1), (b, a), (-1, b)):
            await s.execute(update(LogLeaf).where(LogLeaf.index == old).values(index=new))

    db.call(renumber)


def _insert_leaf(at: int) -> None:
    """Shift the leaves from `at` up by one and slip in a well-formed forged leaf at `at`."""
    from broker.ids import new_id, utcnow

    async def forge(s: AsyncSession) -> None:
        # Behind the service's back, as a forger with database access would.
        forged = AuditEvent(
            id=new_id(), kind="test.event", actor="forger", details={}, created_at=utcnow()
        )
        s.add(forged)
        await s.flush()
        top = await s.scalar(select(func.max(LogLeaf.index)))
        assert top is not None
        for index in range(top, at - 1, -1):
            await s.execute(update(LogLeaf).where(LogLeaf.index == index).values(index=index + 1))
        data = leaf.leaf_bytes(
            kind="test.event", index=at, ts=0, actor="forger", subject=None, details={}
        )
        s.add(
            LogLeaf(
                index=at,
                event_id=forged.id,
                leaf_bytes=data,
                leaf_hash=merkle.leaf_hash(data),
                ts=forged.created_at,
            )
        )

    db.call(forge)


def _set_leaf_hash(index: int, value: bytes) -> None:
    execute(update(LogLeaf).where(LogLeaf.index == index).values(leaf_hash=value))


def _edit_leaf(index: int, *, rehash: bool) -> None:
    async def edit(s: AsyncSession) -> None:
        row = await s.get(LogLeaf, index)
        assert row is not None
        row.leaf_bytes = row.leaf_bytes.replace(b'"actor":"test"', b'"actor":"tset"')
        if rehash:
            row.leaf_hash = merkle.leaf_hash(row.leaf_bytes)

    db.call(edit)


def _set_node(level: int, index: int, value: bytes) -> None:
    execute(
        update(LogNode).where(LogNode.level == level, LogNode.index == index).values(hash=value)
    )


def _swap_nodes(level: int, a: int, b: int) -> None:
    ha = scalar(select(LogNode.hash).where(LogNode.level == level, LogNode.index == a))
    hb = scalar(select(LogNode.hash).where(LogNode.level == level, LogNode.index == b))
    assert ha is not None
    assert hb is not None
    _set_node(level, a, hb)
    _set_node(level, b, ha)


TAMPERING = {
    "leaf bytes edited": (lambda: _edit_leaf(5, rehash=False), "stored hash differs"),
    "leaf bytes and hash edited": (lambda: _edit_leaf(5, rehash=True), "leaves give root"),
    "leaf deleted": (
        lambda: db_exec('DELETE FROM log_leaves WHERE "index" = 9'),
        "expected leaf 9, the broker served 10",
    ),
    "last leaf deleted": (
        lambda: db_exec(
            'DELETE FROM log_leaves WHERE "index" = (SELECT max("index") FROM log_leaves)'
        ),
        "is missing",
    ),
    "leaf hash edited": (
        lambda: _set_leaf_hash(2, b"\x22" * 32),
        "leaf 2: stored hash differs",
    ),
    "leaves reordered": (lambda: _swap_leaves(3, 4), "leaf 3 names another index"),
    "leaf rows renumbered": (lambda: _renumber_leaves(6, 7), "leaf 6 names another index"),
    "leaf inserted": (lambda: _insert_leaf(5), "leaf 6 names another index"),
    "node edited": (lambda: _set_node(1, 2, b"\x11" * 32), "stored node (1, 2) differs"),
    "leaf-level node edited": (lambda: _set_node(0, 6, b"\x11" * 32), "stored node (0, 6)"),
    "nodes reordered": (lambda: _swap_nodes(2, 0, 1), "stored node (2, 0) differs"),
    "node deleted": (
        lambda: db_exec('DELETE FROM log_nodes WHERE level = 3 AND "index" = 1'),
        "log.corrupt",
    ),
}


def db_exec(sql: str) -> None:
    execute(text(sql))


@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_full_verification_detects_tampering(auditor: str, log_key: str, what: str) -> None:
    assert run(auditor, log_key, "--full").exit_code == 0
    tamper, message = TAMPERING[what]
    tamper()
    result = run(auditor, log_key, "--full")
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output


def _forge_checkpoint(size: int, root: bytes) -> None:
    """What a log operator with the key could do: replace the head with another tree's."""

    async def forge(s: AsyncSession) -> None:
        await s.execute(delete(Checkpoint).where(Checkpoint.size == size))
        await sequencer.sign(s, size, root)

    db.call(forge)


def test_split_view_same_size_other_root(auditor: str, log_key: str, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    assert run(auditor, log_key, "--state", str(state)).exit_code == 0
    size = _size()
    seen = note.Checkpoint.parse(
        json.loads(state.read_text())["checkpoint"].split("\n\n")[0] + "\n"
    )
    _forge_checkpoint(size, b"\x42" * 32)
    result = run(auditor, log_key, "--state", str(state))
    assert result.exit_code == 1
    assert "split_view" in result.output
    assert "same size" in result.output
    assert verify._b64(seen.root_hash) in result.output
    assert verify._b64(b"\x42" * 32) in result.output


def test_split_view_newer_but_inconsistent(auditor: str, log_key: str, tmp_path: Path) -> None:
    """The operator rewrites history (an old event changed) and re-signs a longer tree."""
    state = tmp_path / "state.json"
    assert run(auditor, log_key, "--state", str(state)).exit_code == 0
    old = _size()

    async def rewrite(s: AsyncSession) -> None:
        for table in (Checkpoint, LogNode, LogLeaf):
            await s.execute(delete(table))
        await s.execute(update(AuditEvent).values(leaf_index=None))
        first = (await s.scalars(select(AuditEvent).order_by(AuditEvent.created_at))).first()
        assert first is not None
        first.actor = "rewritten"

    db.call(rewrite)
    record(3)
    sequence_all()
    assert _size() > old
    result = run(auditor, log_key, "--state", str(state))
    assert result.exit_code == 1
    assert "split_view" in result.output
    assert "not consistent" in result.output


def _proof(size1: int, size2: int) -> dict[str, Any]:
    """A consistency proof between two sizes, from the store (what an older head could serve)."""
    keys = merkle.consistency_proof_keys(size1, size2)
    nodes = db.call(lambda s: repository.get_nodes(s, keys))
    return {"proof": [verify._b64(h) for h in merkle.consistency_proof(size1, size2, nodes)]}


def test_an_older_checkpoint_is_refused_unless_proven_consistent(
    api: Any, auditor: str, log_key: str, tmp_path: Path, monkeypatch: Any
) -> None:
    state = tmp_path / "state.json"
    record(5)
    sequence_all()
    assert run(auditor, log_key, "--state", str(state)).exit_code == 0
    saved = state.read_text()
    newest = _size()
    execute(delete(Checkpoint).where(Checkpoint.size == newest))  # a lagging replica
    behind = run(auditor, log_key, "--state", str(state))
    assert behind.exit_code == 1
    assert "behind: the broker's checkpoint" in behind.output
    assert state.read_text() == saved
    # A broker that can still prove consistency from its older head is accepted, state kept.
    client = verify.LogClient(api, auditor)
    stored = note.Checkpoint.parse(json.loads(saved)["checkpoint"].split("\n\n")[0] + "\n")
    older = note.Checkpoint.parse(client.checkpoint().split("\n\n")[0] + "\n")
    assert older.size < stored.size
    monkeypatch.setattr(client, "consistency", lambda a, b: _proof(a, b))
    assert asyncio.run(verify._drive(verify._consistent(stored, older), client)) == "behind"


def test_wrong_key_and_bad_proofs(auditor: str, log_key: str, api: Any) -> None:
    from broker.crypto.keys import SigningKey

    other = note.format_verifier_key(
        keyring.load_or_create().log_origin, SigningKey.generate().private_key.public_key()
    )
    result = run(auditor, other)
    assert result.exit_code == 1
    assert "bad_checkpoint" in result.output
    result = run(auditor, "not-a-key")
    assert result.exit_code == 2  # a bad option value, not a failed check
    assert result.output.startswith("error: --log-key: the pinned log key is invalid")
    result = run(auditor, log_key, "--index", str(10**6))
    assert result.exit_code == 1
    assert "bad_proof" in result.output
    _set_node(0, 3, b"\x13" * 32)  # the sibling of leaf 2
    result = run(auditor, log_key, "--index", "2")
    assert result.exit_code == 1
    assert "bad_proof" in result.output


def test_inclusion_for_a_party_that_cannot_read_the_leaf(
    auditor: str, log_key: str, token_for: Any
) -> None:
    token = token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01")
    result = run(token, log_key, "--index", "0")
    assert result.exit_code == 0, result.output
    assert "leaf 0 is included" in result.output


def test_export_verification_from_the_command_line(
    api: Any, auditor: str, log_key: str, tmp_path: Path
) -> None:
    export = api.get("/v1/audit/export", headers={"Authorization": f"Bearer {auditor}"})
    path = tmp_path / "export.json"
    path.write_bytes(export.content)
    ok = runner.invoke(cli, ["audit", "verify-export", str(path), "--log-key", log_key])
    assert ok.exit_code == 0, ok.output
    assert "events proven included" in ok.output
    path.write_bytes(export.content.replace(b'"actor":"test"', b'"actor":"tset"', 1))
    bad = runner.invoke(cli, ["audit", "verify-export", str(path), "--log-key", log_key])
    assert bad.exit_code == 1
    assert "export" in bad.output


def test_over_real_http(live_url: str, world: dict[str, Any], token_for: Any, log_key: str) -> None:
    """The CLI's own httpx2 client against uvicorn: no test transport in between."""
    token = token_for("auditor")
    record(10)
    sequence_all()
    result = run_url(live_url, token, log_key, "--full", "--index", "3")
    assert result.exit_code == 0, result.output
    assert "leaves reproduce the root" in result.output


def run_url(url: str, token: str, log_key: str, *args: str) -> Any:
    return runner.invoke(
        cli, ["audit", "verify", "--url", url, "--token", token, "--log-key", log_key, *args]
    )
