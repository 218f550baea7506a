"""Witnesses against a live broker and a hostile one: `broker witness init/run`, the SDK behind
them, and `broker audit verify --witnesses K` over the cosignatures they leave.

The hostile broker is the real one behind an httpx2 transport that rewrites its checkpoints
with notes the broker's own log key signs (tests/sdk/test_puller_log.py's forger).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner, Result

from broker import keyring
from broker.cli.main import app
from broker.crypto import note
from broker.crypto.keys import generate_passphrase
from broker.sdk import client as client_mod
from broker.sdk import witness
from broker.sdk.client import BrokerClient
from tests.audit.conftest import sequence_all
from tests.sdk.test_puller_log import Hostile, _signed

runner = CliRunner()


@pytest.fixture
def side(
    live_url: str,
    world: dict[str, Any],
    token_for: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    for name in ("BROKER_URL", "BROKER_TOKEN", "BROKER_WITNESS_KEYS", "BROKER_KEYSTORE"):
        monkeypatch.delenv(name, raising=False)
    sequence_all()
    return {
        "url": live_url,
        "tmp": tmp_path,
        "log_key": keyring.load_or_create().log_verifier_key,
        "HK-CED": token_for("agency", agency_id="HK-CED"),
        "VN-GDC": token_for("agency", agency_id="VN-GDC"),
        "auditor": token_for("auditor"),
    }


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def one_line(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def init(s: dict[str, Any], agency: str, name: str) -> str:
    """`broker witness init` into the agency's keystore, then its registration; the vkey."""
    made = cli("witness", "init", "--name", name, "--keystore", str(s["tmp"] / agency / "keys"))
    assert made.exit_code == 0, made.output
    vkey = made.stdout.strip()
    assert note.parse_cosigner_vkey(vkey).name == name
    registered = cli("admin", "witness", "register", vkey, "--agency", agency)
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.stdout)["status"] == "active"
    return vkey


def run(s: dict[str, Any], agency: str, *extra: str) -> Result:
    """`broker witness run --once` as `agency`'s witness."""
    return cli(
        "witness", "run", "--once", "--log-key", s["log_key"], "--url", s["url"],
        "--token", s[agency], "--state", str(s["tmp"] / agency / "state"),
        "--keystore", str(s["tmp"] / agency / "keys"), *extra,
    )  # fmt: skip


def audit_verify(s: dict[str, Any], *extra: str) -> Result:
    return cli(
        "audit", "verify", "--log-key", s["log_key"], "--url", s["url"], "--token", s["auditor"],
        *extra,
    )  # fmt: skip


def sizes(result: Result) -> list[int]:
    """The sizes of the `cosigned ...` lines a run printed."""
    return [int(line.split(" size ")[1].split()[0]) for line in result.stdout.splitlines()]


def kept(s: dict[str, Any], agency: str) -> note.Checkpoint:
    text = json.loads((s["tmp"] / agency / "state" / "witness.json").read_text())["checkpoint"]
    return note.verify_checkpoint(text, note.parse_verifier_key(s["log_key"]))


def test_two_witnesses_cosign_and_the_auditor_requires_them(side: dict[str, Any]) -> None:
    s = side
    hk = init(s, "HK-CED", "hk-ced.example/witness")
    key_files = list((s["tmp"] / "HK-CED" / "keys").iterdir())
    assert {stat.S_IMODE(p.stat().st_mode) for p in key_files} == {0o600}
    assert stat.S_IMODE((s["tmp"] / "HK-CED" / "keys").stat().st_mode) == 0o700
    assert not any(b"PRIVATE" in p.read_bytes() and b"ENCRYPTED" not in p.read_bytes()
                   for p in key_files)  # fmt: skip
    vn = init(s, "VN-GDC", "vn-gdc.example/witness")
    sequence_all()
    first = run(s, "HK-CED")
    assert first.exit_code == 0, first.output
    (size,) = sizes(first)
    assert kept(s, "HK-CED").size == size
    # One witness is not two: the auditor's requirement fails, in one line.
    sequence_all()
    line = one_line(
        audit_verify(s, "--witnesses", "2", "--witness-key", hk, "--witness-key", vn), 1
    )
    assert line.startswith("error: witnesses: ")
    # The second witness meets the first on its checkpoint, and cosigns the latest too.
    second = run(s, "VN-GDC")
    assert second.exit_code == 0, second.output
    assert size in sizes(second)
    assert max(sizes(second)) >= size
    ok = audit_verify(s, "--witnesses", "2", "--witness-key", hk, "--witness-key", vn,
                      "--state", str(s["tmp"] / "auditor.json"))  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "cosigned by 2 pinned witnesses: hk-ced.example/witness, vn-gdc.example/witness" in (
        ok.stdout
    )
    os.environ["BROKER_WITNESS_KEYS"] = f"{hk} {vn}"
    try:
        from_env = audit_verify(s, "--witnesses", "2")
    finally:
        del os.environ["BROKER_WITNESS_KEYS"]
    assert from_env.exit_code == 0, from_env.output
    # A pinned key that is no registered witness's: only one of the two pinned cosigned.
    stranger = note.Cosigner.generate("kr-kcs.example/witness").verifier_key
    line = one_line(
        audit_verify(s, "--witnesses", "2", "--witness-key", hk, "--witness-key", stranger), 1
    )
    assert line.startswith("error: witnesses: 1 of the 2 required")
    # Fewer keys pinned than required, or a key that is no key: the command is wrong.
    assert "--witnesses 2 needs at least 2 --witness-key" in one_line(
        audit_verify(s, "--witnesses", "2", "--witness-key", hk), 2
    )
    assert one_line(
        audit_verify(s, "--witnesses", "1", "--witness-key", s["log_key"]), 2
    ).startswith("error: --witness-key: ")
    # The next round goes on from the kept checkpoint, proven consistent with it.
    sequence_all()
    again = run(s, "HK-CED")
    assert again.exit_code == 0, again.output
    assert min(sizes(again)) >= size
    assert kept(s, "HK-CED").size == max(sizes(again))
    # Round after round, the witnesses meet again on a newer checkpoint: the second one
    # cosigns the first one's latest (not only its own latest), so K of them keep up.
    sequence_all()
    caught_up = run(s, "VN-GDC")
    assert caught_up.exit_code == 0, caught_up.output
    assert max(sizes(again)) in sizes(caught_up)
    newer = audit_verify(s, "--witnesses", "2", "--witness-key", hk, "--witness-key", vn,
                         "--state", str(s["tmp"] / "auditor.json"))  # fmt: skip
    assert newer.exit_code == 0, newer.output
    assert f" size {max(sizes(again))} root " in newer.stdout


def _hostile(monkeypatch: pytest.MonkeyPatch, transport: Hostile) -> None:
    """The CLI's client talks to the broker through `transport`."""
    monkeypatch.setattr(client_mod, "BrokerClient", partial(BrokerClient, transport=transport))


def _is_checkpoint(request: httpx2.Request) -> bool:
    return request.url.path == "/v1/log/checkpoint"


def test_a_forked_checkpoint_is_refused_and_proven(
    side: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = side
    init(s, "HK-CED", "hk-ced.example/witness")
    sequence_all()
    (size,) = sizes(run(s, "HK-CED"))
    honest = kept(s, "HK-CED")
    forged = _signed(size, bytes(32))  # same size, another root, signed by the log key
    posted: list[str] = []

    def fork(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.method == "POST":
            posted.append(request.url.path)
        if not _is_checkpoint(request):
            return None
        return httpx2.Response(200, text=forged, headers={"content-type": "text/plain"})

    _hostile(monkeypatch, Hostile(fork))
    line = one_line(run(s, "HK-CED"), 1)
    assert line.startswith("error: split_view: two checkpoints of one size with different roots")
    assert posted == []  # nothing cosigned
    assert kept(s, "HK-CED") == honest
    (proof,) = (s["tmp"] / "HK-CED" / "state").glob(f"split-view-{size}-*.txt")
    assert str(proof) in line
    body = "".join(line for line in proof.read_text().splitlines(keepends=True)
                   if not line.startswith("# ") or line == "# ---\n")  # fmt: skip
    notes = body.split("# ---\n")
    verifier = note.parse_verifier_key(s["log_key"])
    roots = {note.verify_checkpoint(n, verifier).root_hash for n in notes}
    assert roots == {honest.root_hash, bytes(32)}


def test_a_tree_that_does_not_extend_the_cosigned_one_is_a_split_view(
    side: dict[str, Any],
) -> None:
    s = side
    init(s, "HK-CED", "hk-ced.example/witness")
    sequence_all()
    (size,) = sizes(run(s, "HK-CED"))
    sequence_all()

    def later_fork(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path == "/v1/log/proof/consistency":  # a proof of the forged tree
            return httpx2.Response(200, json={"proof": [base64.b64encode(bytes(32)).decode()]})
        if not _is_checkpoint(request) or request.url.params:
            return None  # the kept size and the cosigned ones: served honestly
        real = note.Checkpoint.parse(response.text.split("\n\n")[0] + "\n")
        forged = _signed(real.size + 5, bytes(32))
        return httpx2.Response(200, text=forged, headers={"content-type": "text/plain"})

    passphrase = os.environ["BROKER_KEY_PASSPHRASE"]
    signer = witness.load(s["tmp"] / "HK-CED" / "keys", passphrase)
    with BrokerClient(s["url"], s["HK-CED"], transport=Hostile(later_fork)) as client:
        follower = witness.Witness(client, signer, s["log_key"], s["tmp"] / "HK-CED" / "state")
        with pytest.raises(witness.SplitView) as refused:
            follower.run_once()
    assert "does not extend the one cosigned" in str(refused.value)
    assert refused.value.proof.exists()
    assert kept(s, "HK-CED").size == size


def test_a_smaller_checkpoint_is_a_rollback(
    side: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = side
    init(s, "HK-CED", "hk-ced.example/witness")
    sequence_all()
    with BrokerClient(s["url"], s["HK-CED"]) as client:
        older = client.get("/v1/log/checkpoint")
    from tests.audit.conftest import record

    record(3)
    sequence_all()
    (size,) = sizes(run(s, "HK-CED"))
    assert size > note.Checkpoint.parse(older.split("\n\n")[0] + "\n").size

    def rollback(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if not _is_checkpoint(request) or request.url.params:
            return None
        return httpx2.Response(200, text=older, headers={"content-type": "text/plain"})

    _hostile(monkeypatch, Hostile(rollback))
    line = one_line(run(s, "HK-CED"), 1)
    assert line.startswith("error: rollback: ")
    assert kept(s, "HK-CED").size == size


def test_mistakes_are_one_line(side: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = side
    keys = str(s["tmp"] / "keys")
    assert "--name: " in one_line(cli("witness", "init", "--name", "a b", "--keystore", keys), 2)
    made = cli("witness", "init", "--name", "hk-ced.example/witness", "--keystore", keys)
    assert made.exit_code == 0, made.output
    twice = one_line(
        cli("witness", "init", "--name", "hk-ced.example/witness", "--keystore", keys), 2
    )
    assert "already holds a witness key" in twice
    # Not registered: the broker refuses, and the line says who must register it.
    sequence_all()
    refused = one_line(
        cli("witness", "run", "--once", "--log-key", s["log_key"], "--url", s["url"],
            "--token", s["HK-CED"], "--state", str(s["tmp"] / "state"), "--keystore", keys),
        1,
    )  # fmt: skip
    assert "log.witness_unknown" in refused
    assert "broker admin witness register" in refused
    base = ["witness", "run", "--once", "--state", str(s["tmp"] / "state")]
    assert one_line(
        cli(*base, "--log-key", "nope", "--token", "brk_x", "--keystore", keys), 2
    ).startswith("error: --log-key: ")
    assert "no witness key" in one_line(
        cli(*base, "--log-key", s["log_key"], "--token", "brk_x", "--keystore", str(s["tmp"])), 2
    )
    down = one_line(
        cli(*base, "--log-key", s["log_key"], "--token", "brk_x", "--keystore", keys,
            "--url", "http://127.0.0.1:9"),
        1,
    )  # fmt: skip
    assert "cannot reach http://127.0.0.1:9" in down
    assert "--token" in one_line(cli(*base, "--log-key", s["log_key"], "--keystore", keys), 2)
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    assert "BROKER_KEY_PASSPHRASE" in one_line(
        cli(*base, "--log-key", s["log_key"], "--token", "brk_x", "--keystore", keys), 2
    )


def test_the_witness_runs_without_the_server_packages(side: dict[str, Any]) -> None:
    """A partner's witness host installs the agency side only."""
    from tests.sdk.test_client_alone import without_server

    s = side
    keys = str(s["tmp"] / "alone" / "keys")
    made = without_server("witness", "init", "--name", "alone.example/witness", "--keystore", keys)
    assert made.returncode == 0, made.stderr
    assert (
        cli("admin", "witness", "register", made.stdout.strip(), "--agency", "HK-CED").exit_code
        == 0
    )
    sequence_all()
    ran = without_server(
        "witness", "run", "--once", "--log-key", s["log_key"], "--url", s["url"],
        "--token", s["HK-CED"], "--state", str(s["tmp"] / "alone" / "state"), "--keystore", keys,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("cosigned ")


def test_an_unproven_checkpoint_or_a_foreign_state_is_not_cosigned(side: dict[str, Any]) -> None:
    from tests.audit.conftest import record

    s = side
    init(s, "HK-CED", "hk-ced.example/witness")
    sequence_all()
    (size,) = sizes(run(s, "HK-CED"))
    record(2)
    sequence_all()

    def no_proof(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if request.url.path != "/v1/log/proof/consistency":
            return None
        return httpx2.Response(422, json={"code": "log.out_of_range", "detail": "no"})

    signer = witness.load(s["tmp"] / "HK-CED" / "keys", os.environ["BROKER_KEY_PASSPHRASE"])
    state = s["tmp"] / "HK-CED" / "state"
    with BrokerClient(s["url"], s["HK-CED"], transport=Hostile(no_proof)) as client:
        with pytest.raises(witness.WitnessError) as refused:
            witness.Witness(client, signer, s["log_key"], state).run_once()
        assert refused.value.code == "unproven"
        assert kept(s, "HK-CED").size == size
        # The state kept under this log key does not verify under another one.
        other = note.format_verifier_key(
            note.parse_verifier_key(s["log_key"]).name,
            note.Cosigner.generate("x").private_key.public_key(),
        )
        with pytest.raises(witness.WitnessError) as foreign:
            witness.Witness(client, signer, other, state).run_once()
        assert foreign.value.code == "state"
    line = one_line(run(s, "HK-CED", "--log-key", other), 2)  # the last --log-key wins
    assert line.startswith("error: --state: ")


def test_following_tells_an_outage_and_cosigns_at_the_next_round(
    side: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --interval`: a busy broker is told on stderr and retried; Ctrl-C stops cleanly."""
    from broker.cli import witness as witness_cli
    from tests.audit.conftest import record

    s = side
    init(s, "HK-CED", "hk-ced.example/witness")
    sequence_all()
    rounds: list[int] = []

    def busy_first(request: httpx2.Request, response: httpx2.Response) -> httpx2.Response | None:
        if len(rounds) == 0:
            return httpx2.Response(503, json={"code": "service.unavailable", "detail": "busy"})
        return None

    def sleep(seconds: float) -> None:
        assert seconds == 5
        rounds.append(1)
        if len(rounds) == 1:
            record(2)
            sequence_all()
        if len(rounds) == 2:
            raise KeyboardInterrupt

    _hostile(monkeypatch, Hostile(busy_first))
    monkeypatch.setattr(witness_cli.time, "sleep", sleep)
    ran = cli(
        "witness", "run", "--interval", "5", "--log-key", s["log_key"], "--url", s["url"],
        "--token", s["HK-CED"], "--state", str(s["tmp"] / "HK-CED" / "state"),
        "--keystore", str(s["tmp"] / "HK-CED" / "keys"),
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert len(rounds) == 2
    assert "service.unavailable" in ran.stderr
    assert "retrying at the next round" in ran.stderr
    assert ran.stderr.strip().splitlines()[-1].startswith("stopped; the last checkpoint cosigned")
    assert sizes(ran)  # the second round cosigned
    assert kept(s, "HK-CED").size == max(sizes(ran))
