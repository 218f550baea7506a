"""`broker demo env --as ROLE`: a guide's environment from the demo's credentials (issue 16).

The demo itself runs end to end in tests/foundation/test_cli.py; here its credentials file is
written by hand, so these tests need neither a server nor a database.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.demo import CREDENTIALS, GUIDE_ROLES
from tests.sdk.test_client_alone import without_server

runner = CliRunner()


def write_credentials(folder: Path) -> dict[str, Any]:
    """A demo-credentials.json as `broker demo` writes it (the fields `env` reads)."""
    credentials = {
        "base_url": "http://127.0.0.1:8123",
        "tokens": {
            "demo-admin": {"role": "admin", "token": "brk_admin"},
            "vn-gdc-hcm": {
                "role": "focal_point",
                "focal_point_id": "VN-GDC/fp-hcm-01",
                "token": "brk_fp",
            },
            "hk-ced-inbox": {"role": "agency", "agency_id": "HK-CED", "token": "brk_inbox"},
            "vn-gdc-registrar": {"role": "registrar", "agency_id": "VN-GDC", "token": "brk_vn_reg"},
            "oversight-auditor": {"role": "auditor", "token": "brk_auditor"},
        },
        "log_key": "broker.example.int/exchange-log/v1+0a1b2c3d+AAAA",
        "keystore": {"folder": str(folder / "demo keystore"), "passphrase": "PASS'WORD"},
    }
    (folder / CREDENTIALS).write_text(json.dumps(credentials))
    return credentials


def evaluated(script: str) -> dict[str, str]:
    """The variables that `eval`-ing `script` in bash sets."""
    shown = subprocess.run(
        ["bash", "-c", 'eval "$1" && env -0', "-", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    return dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)


@pytest.mark.parametrize(
    ("role", "token", "variables"),
    [
        (
            "FOCAL_POINT",
            "brk_fp",
            {
                "BROKER_URL",
                "BROKER_TOKEN",
                "BROKER_KEYSTORE",
                "BROKER_KEY_PASSPHRASE",
                "BROKER_LOG_KEY",  # status --evidence proves the acks' log times
            },
        ),
        (
            "agency",
            "brk_inbox",
            {
                "BROKER_URL",
                "BROKER_TOKEN",
                "BROKER_KEYSTORE",
                "BROKER_KEY_PASSPHRASE",
                "BROKER_LOG_KEY",
            },
        ),
        (
            "registrar",
            "brk_vn_reg",
            {
                "BROKER_URL",
                "BROKER_TOKEN",
                "BROKER_KEYSTORE",
                "BROKER_KEY_PASSPHRASE",
                "REGISTRAR_TOKEN",
            },
        ),
        ("Auditor", "brk_auditor", {"BROKER_URL", "BROKER_TOKEN", "BROKER_LOG_KEY"}),
        ("admin", "brk_admin", {"BROKER_URL", "BROKER_TOKEN"}),
    ],
)
def test_env_prints_the_roles_guide_environment(
    tmp_path: Path, role: str, token: str, variables: set[str]
) -> None:
    credentials = write_credentials(tmp_path)
    result = runner.invoke(app, ["demo", "env", "--as", role, "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    env = evaluated(result.stdout)
    assert env["BROKER_URL"] == "http://127.0.0.1:8123"
    assert env["BROKER_TOKEN"] == token
    assert variables <= set(env)
    for absent in {"BROKER_KEYSTORE", "BROKER_KEY_PASSPHRASE", "BROKER_LOG_KEY"} - variables:
        assert absent not in env
    if "BROKER_KEYSTORE" in variables:  # quoted: a space and a quote survive `eval`
        assert env["BROKER_KEYSTORE"] == credentials["keystore"]["folder"]
        assert env["BROKER_KEY_PASSPHRASE"] == "PASS'WORD"
        # The guides' first step registers keys with the token of the agency's registrar, or
        # the demo admin's for an agency the demo gave none (HK-CED here).
        registrars = {"brk_fp": "brk_vn_reg", "brk_vn_reg": "brk_vn_reg"}
        assert env["REGISTRAR_TOKEN"] == registrars.get(token, "brk_admin")
    if "BROKER_LOG_KEY" in variables:
        assert env["BROKER_LOG_KEY"] == credentials["log_key"]


def test_env_takes_the_demos_data_dir_before_the_subcommand(tmp_path: Path) -> None:
    write_credentials(tmp_path)
    result = runner.invoke(app, ["demo", "--data-dir", str(tmp_path), "env", "--as", "agency"])
    assert result.exit_code == 0, result.output
    assert evaluated(result.stdout)["BROKER_TOKEN"] == "brk_inbox"


@pytest.mark.parametrize(
    ("given", "suggestion"), [("focal", "focal_point"), ("auditer", "auditor"), ("xyz", None)]
)
def test_an_unknown_role_is_one_line_with_the_choices(
    tmp_path: Path, given: str, suggestion: str | None
) -> None:
    write_credentials(tmp_path)
    result = runner.invoke(app, ["demo", "env", "--as", given, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --as {given}: not a demo role")
    assert (f"did you mean {suggestion}?" in lines[0]) == (suggestion is not None)
    assert lines[0].endswith("choose one of " + ", ".join(GUIDE_ROLES))


def test_a_missing_role_or_credentials_file_is_one_line(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["demo", "env", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: --as is missing")
    assert len(missing.stderr.strip().splitlines()) == 1
    nothing = runner.invoke(app, ["demo", "env", "--as", "agency", "--data-dir", str(tmp_path)])
    assert nothing.exit_code == 1
    lines = nothing.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: --data-dir: no {CREDENTIALS} in {tmp_path}")
    assert "run `broker demo` first" in lines[0]


def test_the_demo_speaks_before_it_imports_the_server(tmp_path: Path) -> None:
    """The first line is out before any package of the server is imported: without them the
    command prints it, then the one line that says what to install."""
    result = without_server("demo", "--exit", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == "Exchange broker demo: starting the broker (embedded default)…\n"
    assert result.stderr.startswith("error: `broker demo`")


def test_env_runs_without_the_server_packages(tmp_path: Path) -> None:
    """Where only the agency side is installed, `env` with --data-dir still answers."""
    write_credentials(tmp_path)
    result = without_server("demo", "env", "--as", "focal_point", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert evaluated(result.stdout)["BROKER_TOKEN"] == "brk_fp"


@pytest.mark.parametrize(
    ("argv0", "shown"),
    [
        (".venv/bin/broker", ".venv/bin/broker"),  # the README's command, no venv active
        ("/opt/my env/bin/broker", "'/opt/my env/bin/broker'"),
        ("/usr/lib/python3/site-packages/broker/cli/__main__.py", "broker"),  # python -m
        ("", "broker"),
    ],
)
def test_the_printed_commands_use_the_program_as_it_was_run(
    argv0: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import demo

    monkeypatch.setattr("sys.argv", [argv0, "demo"])
    assert demo._invoked_as() == shown
