"""The agency side's fixtures: a live broker, and keys generated and registered through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.crypto.keys import generate_passphrase

BODY = (
    Path(__file__).resolve().parents[2] / "broker" / "fixtures" / "bodies" / "ivory-shipment.json"
)


@pytest.fixture
def agency_side(
    live_url: str,
    world: dict[str, Any],
    token_for: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    monkeypatch.setenv("BROKER_URL", live_url)
    runner = CliRunner()
    admin = token_for("admin")
    for owner, use in (("VN-GDC/fp-hcm-01", "sig"), ("HK-CED", "enc"), ("HK-CED", "sig")):
        result = runner.invoke(
            app,
            [
                "keys",
                "generate",
                owner,
                "--use",
                use,
                "--keystore",
                str(tmp_path / "keys"),
                "--register",
                "--token",
                admin,
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["registered"] == "active"
    return {
        "runner": runner,
        "url": live_url,
        "keys": tmp_path / "keys",
        "tmp": tmp_path,
        "fp": token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01"),
        "hk": token_for("agency", agency_id="HK-CED"),
    }
