"""Which key signs (issue 16): only one the directory shows active for the signer, or `--kid`;
a failed registration leaves no usable key behind; passphrase mistakes are one clear line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from broker.cli.main import app
from broker.crypto.keys import generate_passphrase
from broker.sdk.client import BrokerClient

BODY = (
    Path(__file__).resolve().parents[2] / "broker" / "fixtures" / "bodies" / "ivory-shipment.json"
)
FP = "VN-GDC/fp-hcm-01"


@pytest.fixture
def side(
    live_url: str,
    world: dict[str, Any],
    token_for: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """HK-CED's encryption key registered (so VN-GDC can send to it); VN-GDC's focal point has
    no key yet."""
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    monkeypatch.setenv("BROKER_URL", live_url)
    monkeypatch.delenv("BROKER_TOKEN", raising=False)
    s = {
        "runner": CliRunner(),
        "url": live_url,
        "keys": tmp_path / "keys",
        "tmp": tmp_path,
        "admin": token_for("admin"),
        "fp": token_for("focal_point", focal_point_id=FP),
    }
    assert generate(s, "HK-CED", "--use", "enc", "--register", "--token", s["admin"]).exit_code == 0
    return s


def cli(s: dict[str, Any], *args: str) -> Result:
    return s["runner"].invoke(app, list(args))


def generate(s: dict[str, Any], owner: str, *args: str) -> Result:
    return cli(s, "keys", "generate", owner, "--keystore", str(s["keys"]), *args)


def registered_key(s: dict[str, Any]) -> str:
    result = generate(s, FP, "--register", "--token", s["admin"])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["kid"])


def unregistered_key(s: dict[str, Any]) -> str:
    result = generate(s, FP)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["kid"])


def send(s: dict[str, Any], *extra: str) -> Result:
    return cli(
        s,
        "send",
        str(BODY),
        "--from",
        FP,
        "--to",
        "HK-CED",
        "--agreement",
        "VN-HK-CMAA-2013",
        "--offence",
        "cites_wildlife",
        "--token",
        s["fp"],
        "--keystore",
        str(s["keys"]),
        "--receipts",
        str(s["tmp"] / "sent"),
        *extra,
    )


def one_line_error(result: Result, code: int = 2) -> str:
    """The command ended with `code` (2: called wrongly, 1: refused or unreachable) and a single
    `error: ...` line, no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    return lines[0]


def key_files(s: dict[str, Any]) -> list[str]:
    return sorted(p.name for p in s["keys"].glob(f"{FP.replace('/', '__')}-sig-*"))


def test_a_failed_registration_leaves_no_usable_key(side: dict[str, Any]) -> None:
    s = side
    good = registered_key(s)
    # The focal point's own token may not register keys: the registration is refused.
    refused = generate(s, FP, "--register", "--token", s["fp"])
    message = one_line_error(refused, 1)
    assert "auth.forbidden" in message
    assert "deleted" in message
    assert key_files(s) == [f"{FP.replace('/', '__')}-sig-{good}.p8.pem"]
    sent = send(s)
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.output)["kid"] == good


def test_a_broker_out_of_reach_at_registration_leaves_no_usable_key(side: dict[str, Any]) -> None:
    s = side
    good = registered_key(s)
    failed = generate(s, FP, "--register", "--token", s["admin"], "--url", "http://127.0.0.1:9")
    assert "cannot reach" in one_line_error(failed, 1)
    assert key_files(s) == [f"{FP.replace('/', '__')}-sig-{good}.p8.pem"]


def test_send_signs_with_the_registered_key_not_the_newest_file(side: dict[str, Any]) -> None:
    s = side
    good = registered_key(s)
    unregistered_key(s)  # newer, but the broker does not know it
    sent = send(s)
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.output)["kid"] == good


def test_dry_run_catches_an_unregistered_key(side: dict[str, Any]) -> None:
    s = side
    kid = unregistered_key(s)
    message = one_line_error(send(s, "--dry-run"))
    assert "not registered" in message
    assert kid[:8] in message
    assert "broker keys list" in message
    assert "--kid" in message


def test_a_retired_key_is_not_used(side: dict[str, Any]) -> None:
    s = side
    old = registered_key(s)
    new = registered_key(s)
    with BrokerClient(s["url"], s["admin"]) as admin:
        admin._call("POST", f"/v1/admin/keys/{new}/retire")
    sent = send(s)
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.output)["kid"] == old


def test_kid_picks_a_key(side: dict[str, Any]) -> None:
    s = side
    old = registered_key(s)
    new = registered_key(s)
    picked = send(s, "--kid", old)
    assert picked.exit_code == 0, picked.output
    assert json.loads(picked.output)["kid"] == old
    assert json.loads(send(s, "--dry-run").output)["kid"] == new
    # A kid the broker would refuse, or that is not in the keystore, is told before sending.
    stray = unregistered_key(s)
    assert "not registered" in one_line_error(send(s, "--dry-run", "--kid", stray))
    assert "broker keys list" in one_line_error(send(s, "--kid", "A" * 43))


def test_keys_list_shows_registration_and_validity(side: dict[str, Any]) -> None:
    s = side
    good = registered_key(s)
    stray = unregistered_key(s)
    listed = cli(s, "keys", "list", FP, "--keystore", str(s["keys"]), "--token", s["fp"], "--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["kid"]: r for r in json.loads(listed.output)}
    assert set(rows) == {good, stray}
    assert rows[good]["use"] == "sig"
    assert rows[good]["registered"] is True
    assert rows[good]["status"] == "active"
    assert rows[good]["not_before"] < rows[good]["not_after"]
    assert rows[good]["signs"] is True
    assert rows[stray]["registered"] is False
    assert rows[stray]["status"] == "not registered"
    assert rows[stray]["signs"] is False
    # The table, and offline: every key with its use, registration unknown.
    table = cli(s, "keys", "list", "--keystore", str(s["keys"]), "--token", s["fp"], "--table")
    assert table.exit_code == 0, table.output
    assert any(
        good in line and "active" in line and "yes" in line for line in table.output.splitlines()
    )
    offline = cli(s, "keys", "list", "--keystore", str(s["keys"]), "--json")
    assert offline.exit_code == 0, offline.output
    assert "pass --token" in offline.output
    rows = json.loads(offline.output[: offline.output.rindex("]") + 1])
    assert {(r["owner"], r["use"], r["registered"]) for r in rows} == {
        ("HK-CED", "enc", None),
        (FP, "sig", None),
    }


def test_a_wrong_passphrase_is_one_clear_line(
    side: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = side
    registered_key(s)
    before = key_files(s)
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    assert "BROKER_KEY_PASSPHRASE does not decrypt" in one_line_error(send(s, "--dry-run"))
    # Generating into the keystore with another passphrase would mix two passphrases in it.
    assert "BROKER_KEY_PASSPHRASE does not decrypt" in one_line_error(generate(s, FP))
    assert key_files(s) == before
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", "password1234")
    assert "BROKER_KEY_PASSPHRASE is not a passphrase" in one_line_error(send(s, "--dry-run"))
