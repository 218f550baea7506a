"""The `broker` CLI: administration against the database, and the demo end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker.cli.main import app

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_lists_the_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("serve", "worker", "beat", "migrate", "demo", "admin"):
        assert word in result.output


def test_admin_commands_against_the_database(clean_db: str) -> None:
    loaded = runner.invoke(app, ["admin", "load-world"])
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.output)["created"]["agencies"] == 34
    listed = json.loads(runner.invoke(app, ["admin", "agency", "list"]).output)
    assert "NZ-POL" in {a["id"] for a in listed}
    issued = runner.invoke(app, ["admin", "token", "create", "ops-admin", "--role", "admin"])
    assert issued.exit_code == 0, issued.output
    token = json.loads(issued.output)
    assert token["token"].startswith("brk_")
    tokens = json.loads(runner.invoke(app, ["admin", "token", "list", "ops-admin"]).output)
    assert tokens[0]["prefix"] == token["token"][:12]
    assert token["token"] not in json.dumps(tokens)
    revoked = runner.invoke(app, ["admin", "token", "revoke", token["id"]])
    assert revoked.exit_code == 0, revoked.output


def test_admin_errors_are_problems(clean_db: str) -> None:
    result = runner.invoke(
        app, ["admin", "agency", "create", "VN-GDC", "--name", "Customs", "--country", "ZZ"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: registry.unknown_country: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_admin_registers_bodies_beyond_states(clean_db: str) -> None:
    unodc = ["admin", "agency", "create", "INT-UNODC", "--name", "UNODC", "--kind"]
    created = runner.invoke(app, [*unodc, "international_body"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["country"] is None
    blo = ["admin", "agency", "create", "VN-BLO-MONGCAI", "--name", "BLO Mong Cai"]
    assert (
        runner.invoke(app, [*blo, "--country", "VN", "--kind", "border_liaison_office"]).exit_code
        == 0
    )
    desk = ["admin", "focal-point", "create", "VN-BLO-MONGCAI/fp-desk-01", "--name", "BLO desk"]
    made = runner.invoke(
        app, [*desk, "--locality", "Mong Cai border gate", "--subdivision", "VN-13"]
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["subdivision"] == "VN-13"
    # A state's id with no country, an INT- id with one, an unknown province: one line each.
    for argv, code in [
        (["admin", "agency", "create", "VN-X1", "--name", "No country"], "unknown_country"),
        ([*unodc[:3], "INT-WCO", "--name", "WCO", "--country", "BE"], "unknown_country"),
        ([*desk[:3], "VN-BLO-MONGCAI/fp-desk-02", "--name", "Desk", "--subdivision", "VN-99"],
         "unknown_subdivision"),
    ]:  # fmt: skip
        refused = runner.invoke(app, argv)
        assert refused.exit_code == 1
        assert refused.stderr.startswith(f"error: registry.{code}: ")


def run_demo(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`broker demo --exit` as a newcomer runs it: no BROKER_ settings at all (and a wide
    terminal, which the output must still not exceed 80 columns for)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")} | {"COLUMNS": "200"}
    command = ["demo", "--exit", "--data-dir", str(data_dir), "--port", str(port)]
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_demo_exit_writes_credentials(tmp_path: Path) -> None:
    port = _free_port()
    result = run_demo(tmp_path, port)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in (
        "VN-HK-CMAA-2013",
        "VN-NZ-TNC-2019",
        "TWIN-GUARDIAN-II",
        "MEKONG-DRAGON-V",
        "NZ-POL",
    ):
        assert text in result.stdout
    creds: dict[str, Any] = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert creds["base_url"] == f"http://127.0.0.1:{port}"
    assert creds["console"] == f"http://127.0.0.1:{port}/console/"
    roles = {t["role"] for t in creds["tokens"].values()}
    assert roles == {"admin", "auditor", "agency", "focal_point", "registrar"}
    assert creds["log_key"].startswith("broker.example.int/exchange-log/v1+")
    assert oct((tmp_path / "demo-credentials.json").stat().st_mode & 0o777) == "0o600"
    # Each step's outcome, as the scenario saw it through the API and the SDK.
    outcomes = creds["outcomes"]
    assert outcomes["delivered"] == "acknowledged"
    assert sorted(outcomes["refusals"].values()) == [
        "replay.mid_reused",
        "scope.direction_excluded",
        "scope.operation_outside_window",
        "scope.recipient_not_party",
        "scope.sender_receive_only",  # RILO A/P receives under Mekong Dragon, never sends
    ]
    assert outcomes["audit"]["verified"] is True  # with both witnesses' cosignatures required
    assert outcomes["audit"]["kinds"]["msg.rejected"] == 5
    # Addressed to the members of MEKONG-DRAGON-V: all 27 but the sender, RILO A/P included.
    assert outcomes["group"] == 26
    assert outcomes["prosecutors"] == "acknowledged"  # MZ-PGR acknowledged VN-SPP's alert
    # Recalled: withdrawn unread from CN-GACC, erased by HK-CED on the notice; and the first
    # alert purged six years on, the log still verifying (audit above).
    assert outcomes["recall"] == {"CN-GACC": "withdrawn", "HK-CED": "erased"}
    assert outcomes["purged"] == "message.purged"
    # Governance: VN-KR-CUSTOMS widened only once both parties' registrars approved (version 2
    # of a fresh world), and a suspended desk refused until reactivated.
    assert outcomes["governance"] == {
        "adopted": 2,
        "offence": "cites_wildlife",
        "suspended": "auth.principal_suspended",
    }
    assert outcomes["acks"] == ["HK-CED"]  # the sender verified the ack it got back
    assert outcomes["witnesses"] == 2
    assert sum(outcomes["results"].values()) == 2  # two seizure feedbacks, by phase
    assert "cosigned by 2 pinned witnesses" in result.stdout
    for code in ("scope.direction_excluded", "scope.operation_outside_window", "replay.mid_reused"):
        assert code in result.stdout
    assert Path(creds["keystore"]["folder"]).is_dir()
    # A progress display that fits 80 columns: the start is told first, then each step.
    lines = result.stdout.splitlines()
    assert lines[0] == "Exchange broker demo: starting the broker (embedded default)…"
    assert lines[1].startswith("✔ database ready in ")
    wide = [line for line in lines if len(line) > 80]
    assert not wide, "\n".join(wide)
    assert "{'agencies'" not in result.stdout  # no dict or JSON dumps
    # The guides' environment, from the credentials the run wrote.
    env = runner.invoke(app, ["demo", "env", "--as", "auditor", "--data-dir", str(tmp_path)])
    assert env.exit_code == 0, env.output
    assert f"export BROKER_TOKEN={creds['tokens']['oversight-auditor']['token']}" in env.stdout
    assert f"export BROKER_LOG_KEY={creds['log_key']}" in env.stdout
    # Running it again on the same data folder works and keeps the world.
    again = run_demo(tmp_path, port)
    assert again.returncode == 0, again.stderr
    assert "(already there)" in again.stdout
    assert not [line for line in again.stdout.splitlines() if len(line) > 80]
