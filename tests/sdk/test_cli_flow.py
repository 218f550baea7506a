"""The agency side end to end over real HTTP: generate keys, send, pull, open, acknowledge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from broker.cli.main import app
from broker.sdk.agent import InboxPuller
from broker.sdk.client import BrokerClient
from broker.sdk.keystore import Keystore

BODY = (
    Path(__file__).resolve().parents[2] / "broker" / "fixtures" / "bodies" / "ivory-shipment.json"
)


def send(s: dict[str, Any], body: Path, *extra: str, offence: str = "cites_wildlife") -> Any:
    """`broker agency send` from VN-GDC's focal point to HK-CED under VN-HK-CMAA-2013."""
    return s["runner"].invoke(
        app,
        [
            "send",
            str(body),
            "--from",
            "VN-GDC/fp-hcm-01",
            "--to",
            "HK-CED",
            "--agreement",
            "VN-HK-CMAA-2013",
            "--offence",
            offence,
            "--token",
            s["fp"],
            "--keystore",
            str(s["keys"]),
            *extra,
        ],
    )


def test_send_pull_show_status(agency_side: dict[str, Any]) -> None:
    from tests.messages.conftest import relay

    s = agency_side
    runner, keys = s["runner"], str(s["keys"])
    sent = send(s, BODY, "--priority", "urgent", "--receipts", str(s["tmp"] / "sent"))
    assert sent.exit_code == 0, sent.output
    mid = json.loads(sent.output)["mid"]
    assert (s["tmp"] / "sent" / f"{mid}.json").exists()
    relay()
    state = str(s["tmp"] / "inbox")
    pulled = runner.invoke(
        app,
        [
            "inbox",
            "pull",
            "--agency",
            "HK-CED",
            "--state",
            state,
            "--token",
            s["hk"],
            "--keystore",
            keys,
        ],
    )
    assert pulled.exit_code == 0, pulled.output
    assert [(r["mid"], r["status"]) for r in json.loads(pulled.output)] == [(mid, "decrypted")]
    shown = json.loads(runner.invoke(app, ["inbox", "show", mid, "--state", state]).output)
    assert shown[0]["alert"]["body"]["subjects"][0]["container_numbers"] == ["CSQU3054383"]
    evidence = s["tmp"] / "inbox" / "alerts" / "VN-GDC" / mid
    assert {p.name for p in evidence.iterdir()} >= {
        "outer.jws",
        "inner.jws",
        "receipt.jws",
        "alert.json",
        "result.json",
    }
    status = json.loads(runner.invoke(app, ["status", mid, "--token", s["fp"]]).output)
    assert status["deliveries"][0]["state"] == "acknowledged"


def test_out_of_scope_is_refused_before_encrypting(agency_side: dict[str, Any]) -> None:
    s = agency_side
    result = send(s, BODY, offence="money_laundering")
    assert result.exit_code == 1
    assert "scope.offence_not_covered" in result.output


def test_invalid_body_reports_every_field(agency_side: dict[str, Any], tmp_path: Path) -> None:
    bad = json.loads(BODY.read_text())
    bad["subjects"][0]["container_numbers"] = ["CSQU3054384"]
    bad["subjects"][0]["vessel_imo"] = "IMO9074728"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    s = agency_side
    result = send(s, path)
    assert result.exit_code == 2
    assert "/subjects/0/container_numbers/0" in result.output
    assert "/subjects/0/vessel_imo" in result.output


def test_pull_resumes_after_a_crash_without_loss_or_duplicates(agency_side: dict[str, Any]) -> None:
    from tests.messages.conftest import relay

    s = agency_side
    for _ in range(3):
        assert send(s, BODY, "--receipts", str(s["tmp"] / "sent")).exit_code == 0
    relay()
    store = Keystore.open(s["keys"])
    state = s["tmp"] / "inbox"
    with BrokerClient(s["url"], s["hk"]) as client:
        first = InboxPuller(client, store, "HK-CED", state).pull()
        assert [r.status for r in first] == ["decrypted"] * 3
        # A crash after the evidence was written but before the cursor was saved.
        (state / "cursor").unlink()
        again = InboxPuller(client, store, "HK-CED", state).pull()
    assert [r.status for r in again] == ["duplicate"] * 3
    assert len(list((state / "alerts" / "VN-GDC").iterdir())) == 3


def test_a_correction_supersedes_the_alert_on_both_sides(agency_side: dict[str, Any]) -> None:
    from tests.messages.conftest import relay

    s = agency_side
    runner, keys = s["runner"], str(s["keys"])
    first = send(s, BODY)
    assert first.exit_code == 0, first.output
    earlier = json.loads(first.output)["mid"]
    fixed = send(s, BODY, "--supersedes", earlier)
    assert fixed.exit_code == 0, fixed.output
    later = json.loads(fixed.output)["mid"]
    again = send(s, BODY, "--supersedes", earlier)
    assert again.exit_code == 1
    assert "correction.already_superseded" in again.stderr
    assert later in again.stderr  # names the correction to correct instead
    relay()
    state = str(s["tmp"] / "inbox")
    pull = ["inbox", "pull", "--agency", "HK-CED", "--state", state]
    pulled = runner.invoke(app, [*pull, "--token", s["hk"], "--keystore", keys])
    assert pulled.exit_code == 0, pulled.output
    assert {r["mid"]: r["status"] for r in json.loads(pulled.output)} == {
        earlier: "decrypted",
        later: "decrypted",
    }
    [old] = json.loads(runner.invoke(app, ["inbox", "show", earlier, "--state", state]).output)
    assert old["superseded_by"] == later
    [new] = json.loads(runner.invoke(app, ["inbox", "show", later, "--state", state]).output)
    assert new["alert"]["routing"]["supersedes"] == earlier
    status = runner.invoke(app, ["status", earlier, "--token", s["fp"], "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["superseded_by"] == later
