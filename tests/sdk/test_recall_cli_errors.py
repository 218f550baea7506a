"""Every mistake with `broker recall` ends in one `error:` line (issue 18.5): exit 2 for a command
called wrongly, told before the broker is asked; exit 1 for a refusal or an unreachable broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result
from uuid_utils.compat import uuid7

from broker.cli.main import app
from broker.crypto.keys import generate_passphrase
from tests.sdk.test_cli_errors import DOWN, FP, one_line, runner
from tests.sdk.test_officer import send_alert

MID = "0190e353-3700-7a1c-9d2e-5b8f4a1c2d3e"


@pytest.fixture(autouse=True)
def _no_broker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BROKER_TOKEN", "BROKER_URL", "BROKER_KEYSTORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())


def recall(*args: str, mid: str = MID, **options: str) -> Result:
    """`broker recall` from VN-GDC's focal point; keyword options override the defaults."""
    values = {"from": FP, "reason": "wrong_recipient", "url": DOWN, "token": "brk_x"} | options
    argv = ["recall", mid]
    for name, value in values.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return runner.invoke(app, [*argv, *args])


# --- Without a broker: told before anything is asked --------------------------------------------


@pytest.mark.parametrize("reason", ["legal_order", "erasure_request"])
def test_a_legal_reason_needs_the_reference(reason: str, tmp_path: Path) -> None:
    line = one_line(recall("--keystore", str(tmp_path / "keys"), reason=reason), 2)
    assert f"--reason {reason} needs --legal-reference" in line


def test_invalid_values_name_their_option(tmp_path: Path) -> None:
    keys = ("--keystore", str(tmp_path / "keys"))
    line = one_line(recall(*keys, mid="not-a-mid"), 2)
    assert "MID not-a-mid: is not a message id" in line
    line = one_line(recall(*keys, **{"from": "VN-GDC"}), 2)
    assert line == (
        "error: --from VN-GDC: is not a focal point id <agency>/<name> like VN-GDC/fp-hcm-01"
    )
    line = one_line(recall(*keys, reason="legal_order", legal_reference="no\nbreaks"), 2)
    assert '--legal-reference "no\\nbreaks": give the order or request number' in line
    line = one_line(recall(*keys, reason="legal_order", legal_reference="#12"), 2)
    assert "--legal-reference #12: give the order" in line
    line = one_line(recall(*keys, reason="wrong-recipient"), 2)
    assert "--reason" in line
    assert "did you mean wrong_recipient?" in line
    assert "Missing option '--from'" in one_line(runner.invoke(app, ["recall", MID]), 2)


def test_no_token(tmp_path: Path) -> None:
    line = one_line(recall("--keystore", str(tmp_path / "keys"), token=""), 2)
    assert "--token is empty" in line
    assert "a focal point token bound to --from" in line


def test_broker_down(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys")
    assert runner.invoke(app, ["keys", "generate", FP, "--keystore", keys]).exit_code == 0
    line = one_line(recall("--keystore", keys), 1)
    assert f"cannot reach {DOWN}" in line


# --- Refusals by a live broker ------------------------------------------------------------------


def test_refusals_are_one_line(agency_side: dict[str, Any], token_for: Any) -> None:
    s = agency_side
    live = {"url": s["url"], "token": s["fp"]}
    keys = ("--keystore", str(s["keys"]))
    unknown = str(uuid7())
    line = one_line(recall(*keys, mid=unknown, **live), 1)
    assert "request.not_found" in line
    assert "check the MID" in line
    # Another agency's focal point token: its key cannot sign for --from's agency's message.
    other = token_for("focal_point", focal_point_id="HK-CED/fp-01")
    mid = send_alert(s)
    line = one_line(recall(*keys, mid=mid, url=s["url"], token=other), 1)
    assert "recall.key_not_signer" in line
    assert f"--from {FP}, but the token belongs to HK-CED/fp-01" in line
    # The sender's own recall still works afterwards, and the broker says it once.
    done = recall(*keys, "--json", mid=mid, **live)
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["mid"] == mid
