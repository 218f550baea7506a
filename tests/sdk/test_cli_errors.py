"""Every mistake on the agency side ends in one `error:` line naming the option, the problem and
the fix (issue 16.4): exit 2 for a command called wrongly, 1 for a refusal or an unreachable
broker; `--verbose` shows the details. One test per mistake a user met."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from broker.cli.main import app
from broker.crypto.keys import generate_passphrase
from broker.schemas import formats

BODY = (
    Path(__file__).resolve().parents[2] / "broker" / "fixtures" / "bodies" / "ivory-shipment.json"
)
FP = "VN-GDC/fp-hcm-01"
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_broker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BROKER_TOKEN", "BROKER_URL", "BROKER_KEYSTORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())


def one_line(result: Result, code: int) -> str:
    """The command ended with `code` and a single `error: ...` line on stderr, no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def send(body: Path, *args: str, to: tuple[str, ...] = ("HK-CED",), **options: str) -> Result:
    """`broker send` from VN-GDC's focal point; keyword options override the defaults."""
    values = {
        "from": FP,
        "agreement": "VN-HK-CMAA-2013",
        "offence": "cites_wildlife",
        "url": DOWN,
        "token": "brk_x",
    } | options
    argv = ["send", str(body)] + [f"--to={agency}" for agency in to]
    for name, value in values.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return runner.invoke(app, [*argv, *args])


def pull(*args: str) -> Result:
    return runner.invoke(app, ["inbox", "pull", *args])


# --- Without a broker ---------------------------------------------------------------------------


def test_malformed_body_json(tmp_path: Path) -> None:
    body = tmp_path / "alert.json"
    body.write_text('{"title": "ivory",\n')
    line = one_line(send(body, "--keystore", str(tmp_path / "keys")), 2)
    assert f"BODY: {body} is not JSON" in line
    assert "line 2" in line


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["send", str(BODY), "--from", FP, "--to", "HK-CED", "--agreement", "A1",
          "--offence", "cites_wildlife"], "a focal point token"),
        (["status", "0190e353-3700-7a1c-9d2e-5b8f4a1c2d3e"], "the token of the focal point"),
        (["inbox", "pull", "--agency", "HK-CED"], "an agency token"),
    ],
)  # fmt: skip
def test_no_token(argv: list[str], needed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    line = one_line(runner.invoke(app, [*argv, "--token", ""]), 2)
    assert "--token is empty" in line
    assert needed in line
    assert "BROKER_TOKEN" in line
    monkeypatch.setenv("BROKER_TOKEN", "")
    assert "--token is empty" in one_line(runner.invoke(app, argv), 2)
    # Pasted with a line break or a space: refused before it becomes an illegal HTTP header.
    for bad in ("brk_abc\nrest", "brk_abc def"):
        assert "characters no token has" in one_line(runner.invoke(app, [*argv, "--token", bad]), 2)


def test_broker_down(tmp_path: Path) -> None:
    line = one_line(runner.invoke(app, ["status", "m1", "--url", DOWN, "--token", "brk_x"]), 1)
    assert f"cannot reach {DOWN}" in line
    assert "start the broker, or pass --url (BROKER_URL)" in line
    verbose = runner.invoke(app, ["-v", "status", "m1", "--url", DOWN, "--token", "brk_x"])
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr
    assert "httpx2.ConnectError" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == line
    keys = str(tmp_path / "keys")
    assert runner.invoke(app, ["keys", "generate", FP, "--keystore", keys]).exit_code == 0
    assert "cannot reach" in one_line(send(BODY, "--keystore", keys), 1)
    line = one_line(
        runner.invoke(app, ["status", "m1", "--url", "localhost:8000", "--token", "t"]), 2
    )
    assert "--url 'localhost:8000' is not a broker URL" in line
    assert "http://127.0.0.1:8000" in line


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    """Click's usage errors (a missing file, a value not among the choices, a missing option)
    are one line too, with the likely choice, not a panel."""
    missing = tmp_path / "nope.json"
    line = one_line(send(missing), 2)
    assert f"'{missing}' does not exist" in line
    assert "see `" in line
    assert "send --help`" in line
    line = one_line(send(BODY, offence="money-laundering"), 2)
    assert "--offence" in line
    assert "did you mean money_laundering?" in line
    assert "did you mean TLP:AMBER?" in one_line(send(BODY, handling="amber"), 2)
    assert "Missing argument 'mid'" in one_line(runner.invoke(app, ["status"]), 2)
    line = one_line(runner.invoke(app, ["status", "m1", "--verbose"], prog_name="broker"), 2)
    assert line == "error: --verbose goes before the command: `broker -v status ...`"
    # A group alone still shows its help.
    alone = runner.invoke(app, ["keys"])
    assert "generate" in alone.output
    assert "error:" not in alone.output


def test_no_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_KEY_PASSPHRASE")
    line = one_line(send(BODY, "--keystore", str(tmp_path / "keys")), 2)
    assert "set BROKER_KEY_PASSPHRASE" in line


def test_unexpected_exception_is_one_line_and_verbose_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from broker.sdk.client import BrokerClient

    def boom(self: Any, mid: str) -> Any:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(BrokerClient, "status", boom)
    argv = ["status", "m1", "--url", DOWN, "--token", "brk_x"]
    line = one_line(runner.invoke(app, argv), 1)
    assert line == "error: unexpected RuntimeError: boom (run with --verbose for details)"
    verbose = runner.invoke(app, ["--verbose", *argv])
    assert isinstance(verbose.exception, RuntimeError)  # raised: typer prints its traceback
    assert isinstance(runner.invoke(app, ["-v", *argv]).exception, RuntimeError)
    assert runner.invoke(app, argv).exit_code == 1  # the flag does not stick to the next run


def test_explain_says_the_expected_check_digit() -> None:
    explain = formats.explain
    assert explain("iso6346", "CSQU3054384") == "check digit should be 3 (CSQU3054383)"
    assert explain("imo-number", "IMO9074728") == "check digit should be 9 (IMO9074729)"
    assert explain("awb", "020-12345674") == (
        "check digit should be 5 (serial 1234567 mod 7: 020-12345675)"
    )
    assert explain("iso6346", "csqu3054383") == "write it in capitals: CSQU3054383"
    assert "e.g. CSQU3054383" in str(explain("iso6346", "CSQ3054383"))
    assert explain("unlocode", "QQABC") == "QQ is not an ISO 3166-1 country code"
    assert explain("partial-date", "2024-02-30") == "2024-02-30 is not a calendar date"
    assert explain("iso6346", "CSQU3054383") is None  # valid
    assert explain("date", "x") is None  # not a custom format
    assert explain("iso6346", 42) is None  # the schema's `type` reports it


# --- Against a live broker ----------------------------------------------------------------------


def live_send(s: dict[str, Any], body: Path = BODY, *args: str, **options: Any) -> Result:
    options = {"url": s["url"], "token": s["fp"], "keystore": str(s["keys"])} | options
    return send(body, *args, **options)


def test_no_key_in_the_keystore(
    agency_side: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = agency_side
    empty = str(s["tmp"] / "empty")
    line = one_line(live_send(s, keystore=empty), 2)
    assert f"no signing key of {FP} in {empty}" in line
    assert "broker keys generate" in line
    line = one_line(
        pull("--agency", "HK-CED", "--token", s["hk"], "--keystore", empty, "--state", empty), 2
    )
    assert f"no encryption key of HK-CED in {empty}" in line
    assert "--keystore" in line
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    assert "BROKER_KEY_PASSPHRASE does not decrypt" in one_line(live_send(s, BODY, "--dry-run"), 2)


def test_routing_errors_name_the_option(agency_side: dict[str, Any]) -> None:
    s = agency_side
    # The header lists recipients sorted: /recipients/1 is the second once sorted.
    line = one_line(live_send(s, to=("hk-ced", "HK-CED")), 2)
    assert "--to hk-ced: is not an agency id like HK-CED" in line
    assert "/recipients" not in line
    assert "^[A-Z]" not in line
    line = one_line(live_send(s, agreement="vn-hk"), 2)
    assert "--agreement vn-hk: is not an agreement id in capitals" in line
    line = one_line(live_send(s, operation="op 1"), 2)
    assert "--operation op 1:" in line


def test_body_errors_name_the_file_pointer_and_check_digit(
    agency_side: dict[str, Any], tmp_path: Path
) -> None:
    bad = json.loads(BODY.read_text())
    bad["subjects"][0]["container_numbers"] = ["CSQU3054384"]
    bad["subjects"][0]["vessel_imo"] = "IMO9074728"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    line = one_line(live_send(agency_side, path), 2)
    assert line.startswith(f"error: BODY {path}: ")
    assert (
        '/subjects/0/container_numbers/0 "CSQU3054384" is not a valid iso6346: '
        "check digit should be 3 (CSQU3054383)"
    ) in line
    assert '/subjects/0/vessel_imo "IMO9074728"' in line
    assert "check digit should be 9 (IMO9074729)" in line


def test_misspelled_agency_and_agreement(agency_side: dict[str, Any]) -> None:
    s = agency_side
    line = one_line(live_send(s, to=("HK-CDE",)), 1)
    assert "--to HK-CDE: unknown agency, did you mean HK-CED?" in line
    assert "scope.recipient_not_party" in line
    line = one_line(live_send(s, agreement="VN-HK-CMAA-2031"), 1)
    assert (
        "--agreement VN-HK-CMAA-2031: not an agreement of yours, did you mean VN-HK-CMAA-2013?"
        in line
    )
    line = one_line(live_send(s, offence="money_laundering"), 1)
    assert "scope.offence_not_covered" in line
    assert "--offence money_laundering: VN-HK-CMAA-2013 lets you send" in line


def test_a_refusal_is_one_line_and_verbose_shows_the_problem(agency_side: dict[str, Any]) -> None:
    s = agency_side
    mid = "0190e353-3700-7a1c-9d2e-5b8f4a1c2d3e"
    argv = ["status", mid, "--url", s["url"], "--token", s["fp"]]
    line = one_line(runner.invoke(app, argv), 1)
    assert line.startswith("error: request.not_found: ")
    assert "check the MID" in line
    verbose = runner.invoke(app, ["--verbose", *argv])
    assert verbose.exit_code == 1
    document, last = verbose.stderr.strip().rsplit("\n", 1)
    assert json.loads(document)["code"] == "request.not_found"
    assert last == line


def test_auth_refusals_say_which_token(agency_side: dict[str, Any]) -> None:
    s = agency_side
    line = one_line(live_send(s, token=s["hk"]), 1)
    assert line.startswith("error: auth.forbidden: ")
    assert "this command needs a focal point token" in line
    assert "--token is an agency token of HK-CED" in line
    line = one_line(live_send(s, token="brk_nope"), 1)
    assert line.startswith("error: auth.unauthenticated: ")
    assert "this broker does not know the token: pass a focal point token" in line
    state = str(s["tmp"] / "inbox")
    line = one_line(
        pull(
            "--agency", "HK-CED", "--token", s["fp"], "--keystore", str(s["keys"]), "--state", state
        ),
        2,
    )
    assert f"needs an agency token, and --token is a focal point token of {FP}" in line


def test_agency_is_checked_against_the_token(agency_side: dict[str, Any]) -> None:
    s = agency_side
    state = s["tmp"] / "inbox"
    line = one_line(
        pull(
            "--agency",
            "VN-GDC",
            "--token",
            s["hk"],
            "--keystore",
            str(s["keys"]),
            "--state",
            str(state),
        ),
        2,
    )
    assert "--agency VN-GDC: the token belongs to HK-CED: pass --agency HK-CED" in line
    assert not state.exists()  # nothing pulled, nothing acknowledged


# --- The auditor's commands ---------------------------------------------------------------------


def some_log_key() -> str:
    from broker.crypto import note
    from broker.crypto.keys import SigningKey

    return note.format_verifier_key(
        "broker.example/log", SigningKey.generate().private_key.public_key()
    )


def verify(*args: str) -> Result:
    return runner.invoke(app, ["audit", "verify", *args])


def test_audit_mistakes(tmp_path: Path) -> None:
    key = some_log_key()
    line = one_line(verify("--url", DOWN, "--log-key", key), 1)
    assert f"cannot reach {DOWN}" in line
    assert "start the broker, or pass --url" in line
    line = one_line(verify("--url", "localhost:8000", "--log-key", key), 2)
    assert "--url 'localhost:8000' is not a URL" in line
    line = one_line(verify("--url", DOWN, "--log-key", "not-a-key"), 2)
    assert line.startswith("error: --log-key: the pinned log key is invalid")
    missing = tmp_path / "export.json"
    line = one_line(
        runner.invoke(app, ["audit", "verify-export", str(missing), "--log-key", key]), 2
    )
    assert f"FILE: cannot read {missing}" in line


def test_audit_without_a_token_says_which(agency_side: dict[str, Any]) -> None:
    from broker import keyring

    line = one_line(
        verify("--url", agency_side["url"], "--log-key", keyring.load_or_create().log_verifier_key),
        1,
    )
    assert "auth.unauthenticated" in line
    assert "pass an auditor or agency token with --token" in line


@pytest.mark.parametrize("expires", ["3w", "31d", "0h", "d", "-1d", "1.5d"])
def test_a_lifetime_the_broker_would_refuse_is_told_before_anything_is_sent(expires: str) -> None:
    line = one_line(send(BODY, expires=expires), 2)
    assert f"--expires {expires!r}: give minutes, hours or days" in line


def test_expires_sets_how_long_partners_may_fetch(agency_side: dict[str, Any]) -> None:
    result = live_send(agency_side, BODY, "--dry-run", "--json", expires="90m")
    assert result.exit_code == 0, result.output
    routing = json.loads(result.output)["routing"]
    assert routing["exp"] - routing["iat"] == 90 * 60


def test_group_addressing_mistakes_are_told_before_anything_is_sent() -> None:
    alone = one_line(send(BODY, to=("members",)), 2)
    assert "--to members needs --operation" in alone
    mixed = one_line(send(BODY, to=("members", "HK-CED"), operation="MEKONG-DRAGON-V"), 2)
    assert "--to members stands alone" in mixed
