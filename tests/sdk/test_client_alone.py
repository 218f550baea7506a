"""The agency side installs and runs alone (issue 16, point 1): one top-level package, and the
agency commands and SDK work with none of the server's packages, which the server commands
name in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from broker.cli.common import SERVER_PACKAGES
from tests.sdk.conftest import BODY
from tests.sdk.without_server import server_packages

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_SERVER = Path(__file__).with_name("without_server.py")


def without_server(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(WITHOUT_SERVER), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_knows_every_server_package() -> None:
    """A server command without the extra must be told as such, whichever package is missing."""
    assert server_packages() >= {"fastapi", "sqlalchemy", "celery", "pydantic_settings"}
    assert sorted(server_packages() - SERVER_PACKAGES) == []


@pytest.mark.slow
def test_the_wheel_holds_only_the_broker_package(tmp_path: Path) -> None:
    """Top-level `schemas` or `workers` would collide with an integrator's own packages."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"broker"}
    assert "broker/schemas/v1/routing.json" in names  # the contract's files travel with it


def test_the_sdk_imports_as_documented_without_the_server() -> None:
    code = (
        "from broker.sdk import BrokerClient, Keystore, BrokerAPIError, NoSigningKey\n"
        "from broker.sdk.agent import InboxPuller, compose\n"
        "from broker import schemas\n"
        "schemas.validator('routing')\n"
        "print('ok')"
    )
    result = without_server("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_agency_commands_run_without_the_server(agency_side: dict[str, Any]) -> None:
    s = agency_side
    env = {"BROKER_URL": s["url"]}
    assert without_server("--help").returncode == 0
    listed = without_server(
        "keys", "list", "--keystore", str(s["keys"]), "--token", s["fp"], "--json", env=env
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {(r["owner"], r["use"], r["status"]) for r in rows} == {
        ("VN-GDC/fp-hcm-01", "sig", "active"),
        ("HK-CED", "enc", "active"),
        ("HK-CED", "sig", "active"),
    }
    dry = without_server(
        "send", str(BODY), "--from", "VN-GDC/fp-hcm-01", "--to", "HK-CED",
        "--agreement", "VN-HK-CMAA-2013", "--offence", "cites_wildlife",
        "--token", s["fp"], "--keystore", str(s["keys"]), "--dry-run",
        env=env,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["decision"] == "accept"
    # The officer's commands (issue 16, point 5).
    agreements = without_server("agreements", "--token", s["fp"], "--json", env=env)
    assert agreements.returncode == 0, agreements.stderr
    assert "VN-HK-CMAA-2013" in {a["id"] for a in json.loads(agreements.stdout)}
    scope = without_server("scope", "--to", "HK-CED", "--token", s["fp"], "--table", env=env)
    assert scope.returncode == 0, scope.stderr
    assert "VN-HK-CMAA-2013 -> HK-CED" in scope.stdout
    feedback = without_server(
        "feedback", "0190e353-3700-7a1c-9d2e-5b8f4a1c2d3e", "--from", "VN-GDC/fp-hcm-01",
        "--outcome", "seized", "--commodity", "nps", "--quantity", "8.2kg",
        "--narrative", "Found.", "--to", "HK-CED", "--agreement", "VN-HK-CMAA-2013",
        "--offence", "precursors", "--token", s["fp"], "--keystore", str(s["keys"]), "--dry-run",
        env=env,
    )  # fmt: skip
    # Built, validated, signed and checked without the server's packages: the broker refuses
    # feedback on an alert VN-GDC never received.
    assert feedback.returncode == 1, feedback.stderr
    assert "scope.feedback_not_recipient" in feedback.stderr
    followed = without_server(
        "inbox", "pull", "--agency", "HK-CED", "--state", str(s["tmp"] / "inbox"),
        "--token", s["hk"], "--keystore", str(s["keys"]), "--follow", "--for", "0.5", env=env,
    )  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    assert "done: 0 item(s) settled" in followed.stderr


@pytest.mark.parametrize(
    "args", [["serve"], ["demo", "--exit"], ["worker"], ["migrate"], ["admin", "agency", "list"]]
)
def test_server_commands_say_what_to_install(args: list[str], tmp_path: Path) -> None:
    result = (
        without_server(*args, "--data-dir", str(tmp_path))
        if args[0] != "worker"
        else (without_server(*args))
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: `broker {args[0]}`")
    assert "pip install 'exchange-broker[server]'" in lines[0]
