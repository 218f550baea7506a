"""`broker results`: the coordinator's view on the command line, as a table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from typer.testing import CliRunner

from broker.cli.main import app
from tests.results.conftest import ALPHA, BRAVO, Scene, generate


def _run(live_url: str, token: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["results", *args, "--url", live_url, "--token", token])


def test_the_coordinator_reads_results_on_the_command_line(
    live_url: str, scene: Scene, token_for: Any
) -> None:
    generate(scene, 30, seed=9)
    token = token_for("agency", agency_id="VN-GDC")
    api = scene.exchange.client.get(
        f"/v1/operations/{ALPHA}/results", headers={"Authorization": f"Bearer {token}"}
    ).json()
    as_json = _run(live_url, token, ALPHA, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == api
    table = _run(live_url, token, ALPHA, "--table", "--phase", "alpha-1")
    assert table.exit_code == 0, table.output
    assert "phase        alpha-1" in table.output
    assert "ISO week" in table.output
    as_csv = _run(live_url, token, ALPHA, "--csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert sum(int(r["count"]) for r in rows) == api["total"] > 0
    # Not the coordinator of BRAVO: the broker's refusal in one line, exit status 1.
    refused = _run(live_url, token, BRAVO)
    assert refused.exit_code == 1
    assert "auth.forbidden" in refused.output
