"""An officer's conveniences (issue 16, point 5): `agreements`, `scope`, `feedback`, choices and
help on every agency option, tables or JSON, and `inbox pull --follow`, against a live broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest
from typer.testing import Result

from broker.cli.main import app
from broker.sdk.agent import Backoff, InboxPuller, Pulled, interrupts_deferred, quantity_band
from broker.sdk.client import BrokerAPIError, BrokerClient
from broker.sdk.keystore import Keystore
from tests.sdk.conftest import BODY

WITHOUT_SERVER = Path(__file__).with_name("without_server.py")

FP = "VN-GDC/fp-hcm-01"


def cli(s: dict[str, Any], *args: str) -> Result:
    return s["runner"].invoke(app, list(args))


def lines_of(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def send_alert(s: dict[str, Any], *extra: str) -> str:
    """An alert from VN-GDC's focal point to HK-CED, made available in HK-CED's inbox."""
    from broker.inbox import jobs

    sent = cli(
        s, "send", str(BODY), "--from", FP, "--to", "HK-CED", "--agreement", "VN-HK-CMAA-2013",
        "--offence", "cites_wildlife", "--token", s["fp"], "--keystore", str(s["keys"]),
        "--receipts", str(s["tmp"] / "sent"), "--json", *extra,
    )  # fmt: skip
    assert sent.exit_code == 0, sent.output
    jobs.relay()
    return str(json.loads(sent.output)["mid"])


def pull(s: dict[str, Any], *extra: str) -> Result:
    return cli(
        s, "inbox", "pull", "--agency", "HK-CED", "--state", str(s["tmp"] / "inbox"),
        "--token", s["hk"], "--keystore", str(s["keys"]), *extra,
    )  # fmt: skip


# --- agreements and scope -------------------------------------------------------------------


def test_agreements_lists_only_the_callers_own(agency_side: dict[str, Any], token_for: Any) -> None:
    s = agency_side
    mine = cli(s, "agreements", "--token", s["fp"], "--json")
    assert mine.exit_code == 0, mine.output
    assert {a["id"] for a in json.loads(mine.output)} == {
        "INCB-IONICS",
        "MEKONG-DRAGON",
        "VN-HK-CMAA-2013",
        "VN-KR-CUSTOMS",
    }
    # Another agency's token sees its own agreement and none of VN-GDC's.
    nz = cli(s, "agreements", "--token", token_for("agency", agency_id="NZ-POL"), "--json")
    assert [a["id"] for a in json.loads(nz.output)] == ["VN-NZ-TNC-2019"]
    th = cli(s, "agreements", "--token", token_for("agency", agency_id="TH-CUS"), "--json")
    assert [a["id"] for a in json.loads(th.output)] == ["INCB-IONICS", "MEKONG-DRAGON"]
    table = cli(s, "agreements", "--token", s["fp"], "--table")
    assert lines_of(table)[0].split()[:3] == ["agreement", "version", "status"]
    (row,) = [line for line in lines_of(table) if line.startswith("VN-HK-CMAA-2013")]
    for cell in ("HK-CED", "TLP:AMBER+STRICT", FP):
        assert cell in row


def test_the_view_says_when_each_focal_point_is_designated(
    agency_side: dict[str, Any],
) -> None:
    s = agency_side
    views = json.loads(cli(s, "agreements", "--token", s["fp"], "--json").output)
    hk = next(v for v in views if v["id"] == "VN-HK-CMAA-2013")
    assert hk["designations"] == [
        {"focal_point_id": FP, "valid_from": "2023-01-01", "valid_until": None}
    ]


def test_scope_to_a_partner(agency_side: dict[str, Any], token_for: Any) -> None:
    s = agency_side
    result = cli(s, "scope", "--to", "HK-CED", "--token", s["fp"], "--json")
    assert result.exit_code == 0, result.output
    rows = {r["agreement"]: r for r in json.loads(result.output)}
    assert set(rows) == {"MEKONG-DRAGON", "VN-HK-CMAA-2013"}
    cmaa = rows["VN-HK-CMAA-2013"]
    assert cmaa["may_send"] is True
    assert cmaa["to"] == "HK-CED"
    assert "cites_wildlife" in cmaa["offences"]
    assert cmaa["max_handling"] == "TLP:AMBER+STRICT"
    assert cmaa["until"] is None
    assert [op["id"] for op in rows["MEKONG-DRAGON"]["operations"]] == ["MEKONG-DRAGON-V"]
    # The excluded direction, with its legal reason, for NZ-POL's focal point.
    nz = token_for("focal_point", focal_point_id="NZ-POL/fp-01")
    (row,) = json.loads(cli(s, "scope", "--to", "VN-MPS", "--token", nz, "--json").output)
    assert "narcotics" not in row["offences"]
    assert row["excluded"][0]["offences"] == ["narcotics"]
    table = cli(s, "scope", "--to", "VN-MPS", "--token", nz, "--table")
    assert "VN-NZ-TNC-2019 -> VN-MPS" in table.output
    assert "death penalty" in table.output
    assert "narcotics (an assurance would lift it): Offences that may carry" in table.output


def test_scope_of_a_focal_point_not_designated(agency_side: dict[str, Any], token_for: Any) -> None:
    """VN-GDC/fp-hn-01 is designated under VN-KR-CUSTOMS only: toward HK-CED it may not send."""
    s = agency_side
    hn = token_for("focal_point", focal_point_id="VN-GDC/fp-hn-01")
    rows = json.loads(cli(s, "scope", "--to", "HK-CED", "--token", hn, "--json").output)
    assert rows
    assert all(r["may_send"] is False for r in rows)
    assert all("not designated" in r["why_not"] for r in rows)
    kr = json.loads(cli(s, "scope", "--to", "KR-KCS", "--token", hn, "--json").output)
    assert {r["agreement"]: r["may_send"] for r in kr} == {
        "INCB-IONICS": False,
        "MEKONG-DRAGON": False,
        "VN-KR-CUSTOMS": True,
    }


def test_scope_to_a_stranger_is_empty_with_a_note(agency_side: dict[str, Any]) -> None:
    s = agency_side
    result = cli(s, "scope", "--to", "NZ-POL", "--token", s["fp"], "--json")
    assert result.exit_code == 0, result.output
    assert "no agreement of yours has NZ-POL as a partner" in result.output
    assert json.loads(result.output[result.output.index("[") :]) == []


def test_a_recorded_assurance_lifts_the_exclusion(
    agency_side: dict[str, Any], world: dict[str, Any], token_for: Any
) -> None:
    """What `scope` shows must be what the broker decides: an assurance lifts an
    `unless_assurance` exclusion in both (the view barred the offence regardless)."""
    from broker import db
    from broker.agreements import service

    doc = next(a for a in world["agreements"] if a["id"] == "VN-NZ-TNC-2019")
    doc = doc | {
        "assurances": [
            {
                "from": "NZ-POL",
                "to": "VN-MPS",
                "offence": "narcotics",
                "reference": "Diplomatic note 2026/17",
                "recorded_at": "2026-03-01",
            }
        ]
    }
    nz = token_for("focal_point", focal_point_id="NZ-POL/fp-01")

    def check() -> dict[str, Any]:
        with BrokerClient(agency_side["url"], nz) as client:
            return client.check(routing)

    routing = {
        "v": 1, "kind": "alert", "mid": "0190e353-3700-7a1c-9d2e-5b8f4a1c2d3e",
        "iat": 1_800_000_000, "exp": 1_800_086_400, "sender": "NZ-POL",
        "sender_fp": "NZ-POL/fp-01", "recipients": ["VN-MPS"],
        "agreement": "VN-NZ-TNC-2019", "operation": None, "offence": "narcotics",
        "subject_types": ["person"], "priority": "routine", "handling": "TLP:AMBER",
    }  # fmt: skip
    assert check()["code"] == "scope.direction_excluded"
    db.call(service.update_agreement, "VN-NZ-TNC-2019", doc, actor="test")
    (row,) = json.loads(cli(agency_side, "scope", "--token", nz, "--json").output)
    assert "narcotics" in row["offences"]
    assert row["excluded"][0]["assured"] == ["narcotics"]
    # The broker's scope decision agrees (what refuses it now is that VN-MPS has no key here).
    assert not str(check().get("code")).startswith("scope.")


# --- choices, help, tables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["send"], "--offence"),
        (["send"], "--priority"),
        (["send"], "--handling"),
        (["send"], "--kind"),
        (["feedback"], "--outcome"),
        (["feedback"], "--commodity"),
        (["feedback"], "--quantity-band"),
        (["feedback"], "--subject-type"),
    ],
)
def test_vocabulary_options_refuse_other_values(command: list[str], option: str) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*command, option, "not-a-code"])
    assert result.exit_code == 2
    assert "not-a-code" in result.output


def test_every_agency_option_has_help() -> None:
    import typer

    group: Any = typer.main.get_command(app)
    commands = {
        name: group.commands[name] for name in ("send", "status", "agreements", "scope", "feedback")
    } | {
        f"{sub} {name}": group.commands[sub].commands[name]
        for sub, name in (
            ("keys", "list"),
            ("keys", "generate"),
            ("inbox", "pull"),
            ("inbox", "show"),
        )
    }
    bare = [
        f"{name} {p.name}"
        for name, command in commands.items()
        for p in command.params
        if not getattr(p, "help", None)
    ]
    assert all(c.help for c in commands.values())
    assert bare == []


def test_send_status_pull_show_print_tables_or_json(agency_side: dict[str, Any]) -> None:
    s = agency_side
    sent = cli(
        s, "send", str(BODY), "--from", FP, "--to", "HK-CED", "--agreement", "VN-HK-CMAA-2013",
        "--offence", "cites_wildlife", "--token", s["fp"], "--keystore", str(s["keys"]),
        "--receipts", str(s["tmp"] / "sent"), "--table",
    )  # fmt: skip
    assert sent.exit_code == 0, sent.output
    mid = next(line.split()[1] for line in lines_of(sent) if line.startswith("mid "))
    accepted = next(line for line in lines_of(sent) if line.startswith("accepted at"))
    assert accepted.endswith("Z")
    assert "T" in accepted  # ISO UTC
    from broker.inbox import jobs

    jobs.relay()
    pulled = pull(s, "--table")
    assert pulled.exit_code == 0, pulled.output
    assert lines_of(pulled)[0].split() == ["seq", "mid", "sender", "status", "reason"]
    assert mid in pulled.output
    assert "decrypted" in pulled.output
    status = cli(s, "status", mid, "--token", s["fp"], "--table")
    assert status.exit_code == 0, status.output
    (delivery,) = [line for line in lines_of(status) if line.startswith("HK-CED")]
    assert "acknowledged" in delivery
    assert "decrypted" in delivery
    assert re.search(r"\b\d{10,13}\b", status.output) is None  # times as ISO, not epochs
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", delivery)
    # Piped (CliRunner's stdout is not a terminal), the same commands print JSON.
    assert json.loads(cli(s, "status", mid, "--token", s["fp"]).output)["mid"] == mid
    state = str(s["tmp"] / "inbox")
    shown = cli(s, "inbox", "show", mid, "--state", state, "--table")
    assert "agreement" in shown.output
    assert "CSQU3054383" in shown.output
    listed = cli(s, "inbox", "show", "--state", state, "--table")
    assert lines_of(listed)[0].split()[:4] == ["seq", "mid", "sender", "status"]
    assert json.loads(cli(s, "inbox", "show", "--state", state).output)[0]["mid"] == mid


# --- feedback -------------------------------------------------------------------------------


@pytest.fixture
def answering(agency_side: dict[str, Any], token_for: Any) -> dict[str, Any]:
    """HK-CED's focal point can sign feedback, and VN-GDC can open it."""
    s = agency_side
    admin = token_for("admin")
    for owner, use in (("HK-CED/fp-01", "sig"), ("VN-GDC", "enc"), ("VN-GDC", "sig")):
        result = cli(
            s, "keys", "generate", owner, "--use", use, "--keystore", str(s["keys"]),
            "--register", "--token", admin,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return s | {
        "hk_fp": token_for("focal_point", focal_point_id="HK-CED/fp-01"),
        "vn": token_for("agency", agency_id="VN-GDC"),
    }


def feedback(s: dict[str, Any], mid: str, *args: str) -> Result:
    return cli(
        s, "feedback", mid, "--from", "HK-CED/fp-01", "--state", str(s["tmp"] / "inbox"),
        "--token", s["hk_fp"], "--keystore", str(s["keys"]),
        "--receipts", str(s["tmp"] / "hk-sent"), *args,
    )  # fmt: skip


def test_feedback_from_options_reaches_the_sender(answering: dict[str, Any]) -> None:
    from broker.inbox import jobs

    s = answering
    mid = send_alert(s, "--handling", "TLP:GREEN")
    assert pull(s).exit_code == 0
    sent = feedback(
        s, mid, "--outcome", "seized", "--commodity", "wildlife", "--quantity", "212 kg",
        "--species", "Loxodonta africana", "--cites-appendix", "I", "--place", "HKHKG",
        "--seized-on", "2026-11-22", "--narrative", "212 kg of tusks under frozen fish.",
        "--json",
    )  # fmt: skip
    assert sent.exit_code == 0, sent.output
    answer = json.loads(sent.output)
    routing = json.loads(Path(answer["receipt"]).read_text())["routing"]
    # Agreement, offence, recipient and handling come from the alert kept in the inbox.
    assert routing["kind"] == "feedback"
    assert routing["recipients"] == ["VN-GDC"]
    assert routing["agreement"] == "VN-HK-CMAA-2013"
    assert routing["offence"] == "cites_wildlife"
    assert routing["handling"] == "TLP:GREEN"
    assert routing["subject_types"] == ["seizure"]
    assert {k: routing[k] for k in ("in_reply_to", "outcome", "commodity", "quantity_band")} == {
        "in_reply_to": mid,
        "outcome": "seized",
        "commodity": "wildlife",
        "quantity_band": "100_1000kg",
    }
    # VN-GDC opens it: the body the options built, validated by the schema on both sides.
    jobs.relay()
    with BrokerClient(s["url"], s["vn"]) as client:
        store = Keystore.open(s["keys"]).with_directory(client)
        (got,) = InboxPuller(client, store, "VN-GDC", s["tmp"] / "vn-inbox").pull()
    assert got.status == "decrypted", got
    body = json.loads((got.folder / "alert.json").read_text())["body"]  # type: ignore[operator]
    assert body["references"] == [mid]
    assert body["seizures"] == [
        {
            "type": "seizure",
            "date": "2026-11-22",
            "commodity": "wildlife",
            "place": {"locode": "HKHKG"},
            "quantity": {"value": 212, "unit": "kg"},
            "species": "Loxodonta africana",
            "cites_appendix": "I",
        }
    ]


def test_feedback_without_the_alert_needs_its_routing(answering: dict[str, Any]) -> None:
    s = answering
    mid = send_alert(s)
    missing = feedback(s, mid, "--outcome", "no_find", "--narrative", "Nothing found.")
    assert missing.exit_code == 2
    (line,) = lines_of(missing)
    assert line.startswith("error: ")
    assert "--to, --agreement, --offence" in line
    given = feedback(
        s, mid, "--outcome", "no_find", "--narrative", "Nothing found.", "--to", "VN-GDC",
        "--agreement", "VN-HK-CMAA-2013", "--offence", "cites_wildlife",
        "--subject-type", "shipment", "--dry-run", "--json",
    )  # fmt: skip
    assert given.exit_code == 0, given.output
    dry = json.loads(given.output)
    assert dry["decision"] == "accept"
    assert dry["routing"]["outcome"] == "no_find"
    assert "commodity" not in dry["routing"]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--quantity", "12 tons"], "--quantity"),
        (["--quantity", "-3kg"], "--quantity"),
        (["--species", "Loxodonta africana"], "--cites-appendix"),
        (["--species", "loxodonta", "--cites-appendix", "I"], "--species"),
        (["--cites-appendix", "IV", "--species", "Loxodonta africana"], "--cites-appendix"),
        (["--seized-on", "22/11/2026", "--species", "Loxodonta africana", "--cites-appendix", "I"],
         "--seized-on"),
        (["--to", "vn gdc", "--species", "Loxodonta africana", "--cites-appendix", "I"], "--to"),
    ],
)  # fmt: skip
def test_feedback_mistakes_name_their_option(
    answering: dict[str, Any], args: list[str], names: str
) -> None:
    s = answering
    mid = send_alert(s)
    assert pull(s).exit_code == 0
    result = feedback(
        s, mid, "--outcome", "seized", "--commodity", "wildlife", "--narrative", "Seized.",
        "--dry-run", *args,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    (line,) = lines_of(result)
    assert line.startswith("error: "), line
    assert names in line, line


def test_quantity_bands() -> None:
    assert quantity_band({"value": 0.5, "unit": "kg"}) == "lt_1kg"
    assert quantity_band({"value": 1, "unit": "kg"}) == "1_10kg"
    assert quantity_band({"value": 8.2, "unit": "kg"}) == "1_10kg"
    assert quantity_band({"value": 212, "unit": "kg"}) == "100_1000kg"
    assert quantity_band({"value": 1000, "unit": "kg"}) == "gt_1000kg"
    assert quantity_band({"value": 500, "unit": "g"}) == "lt_1kg"
    assert quantity_band({"value": 40, "unit": "pieces"}) is None
    assert quantity_band(None) is None


# --- inbox pull --follow --------------------------------------------------------------------


def test_follow_prints_items_as_they_come_and_stops_after_max_items(
    agency_side: dict[str, Any],
) -> None:
    s = agency_side
    mids = [send_alert(s) for _ in range(3)]
    result = pull(s, "--follow", "--max-items", "2", "--json")
    assert result.exit_code == 0, result.output
    items = [json.loads(line) for line in lines_of(result) if line.startswith("{")]
    assert [i["mid"] for i in items] == mids[:2]
    assert "done: 2 item(s) settled" in result.output
    # The next run starts after them: the third, once, and nothing acknowledged twice.
    rest = pull(s, "--follow", "--max-items", "1", "--json")
    (last,) = [json.loads(x) for x in lines_of(rest) if x.startswith("{")]
    assert last["mid"] == mids[2]
    assert last["status"] == "decrypted"
    assert (s["tmp"] / "inbox" / "cursor").read_text() == str(last["seq"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_follow_stops_cleanly_on_ctrl_c(agency_side: dict[str, Any], sig: signal.Signals) -> None:
    """A real process, agency side only: interrupted while long-polling, it says where it
    stopped, keeps the cursor, and the next run neither loses nor repeats anything."""
    s = agency_side
    mid = send_alert(s)
    state = s["tmp"] / "inbox"
    process = subprocess.Popen(
        [
            sys.executable, str(WITHOUT_SERVER), "inbox", "pull", "--agency", "HK-CED",
            "--state", str(state), "--token", s["hk"], "--keystore", str(s["keys"]),
            "--follow", "--wait", "2",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "BROKER_URL": s["url"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["mid"] == mid
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 0, err
    assert out.strip() == ""
    (line,) = err.strip().splitlines()
    assert line == f"stopped: 1 item(s) settled; cursor {first['seq']} saved in {state}/cursor"
    assert (state / "cursor").read_text() == str(first["seq"])
    again = pull(s, "--json")
    assert json.loads(again.output) == []


def test_follow_for_a_while_on_an_empty_inbox(agency_side: dict[str, Any]) -> None:
    result = pull(agency_side, "--follow", "--for", "1", "--table")
    assert result.exit_code == 0, result.output
    assert lines_of(result)[0].split() == ["seq", "mid", "sender", "status", "reason"]
    assert "done: 0 item(s) settled" in result.output


def test_bounds_without_follow_are_a_mistake(agency_side: dict[str, Any]) -> None:
    result = pull(agency_side, "--max-items", "2")
    assert result.exit_code == 2
    assert "add --follow" in result.output


class Flaky(httpx2.BaseTransport):
    """The real broker behind answers that fail first: `failures` is a list of 503 (with the
    given Retry-After), 429, or "drop" (a transport error)."""

    def __init__(self, failures: list[tuple[int | str, str | None]]) -> None:
        self.failures = failures
        self.real = httpx2.HTTPTransport()
        self.seen: list[str] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/inbox" and self.failures:
            status, retry_after = self.failures.pop(0)
            self.seen.append(str(status))
            if status == "drop":
                raise httpx2.ConnectError("connection refused", request=request)
            headers = {"Retry-After": retry_after.encode()} if retry_after is not None else {}
            return httpx2.Response(
                int(status), json={"code": "test.busy", "detail": "busy"}, headers=headers
            )
        return self.real.handle_request(request)

    def close(self) -> None:
        self.real.close()


def test_follow_retries_busy_and_unreachable_broker(agency_side: dict[str, Any]) -> None:
    s = agency_side
    mid = send_alert(s)
    transport = Flaky([(503, "0"), ("drop", None), (429, "0"), (503, "\u0661")])
    events: list[str] = []
    got: list[Pulled] = []
    with BrokerClient(s["url"], s["hk"], transport=transport) as client:
        store = Keystore.open(s["keys"]).with_directory(client)
        puller = InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox")
        settled = puller.follow(
            wait=1,
            max_items=1,
            on_item=got.append,
            on_event=events.append,
            backoff=Backoff(base_s=0.01, cap_s=0.02),
        )
    assert settled == 1
    assert [r.mid for r in got] == [mid]
    assert transport.seen == ["503", "drop", "429", "503"]
    assert [e.split(":")[0] for e in events if "retry" in e] == [
        "test.busy",
        "ConnectError",
        "test.busy",
        "test.busy",
    ]


def test_follow_gives_up_on_a_refusal(agency_side: dict[str, Any]) -> None:
    s = agency_side
    with BrokerClient(s["url"], s["hk"], transport=Flaky([(401, None)])) as client:
        store = Keystore.open(s["keys"]).with_directory(client)
        with pytest.raises(BrokerAPIError) as info:
            InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox").follow(wait=1)
    assert info.value.status == 401


def test_follow_stops_from_another_thread_without_loss(agency_side: dict[str, Any]) -> None:
    s = agency_side
    stop = threading.Event()
    got: list[Pulled] = []
    arrived = threading.Event()

    def on_item(r: Pulled) -> None:
        got.append(r)
        arrived.set()

    with BrokerClient(s["url"], s["hk"]) as client:
        store = Keystore.open(s["keys"]).with_directory(client)
        puller = InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox")
        worker = threading.Thread(
            target=puller.follow, kwargs={"wait": 1, "stop": stop, "on_item": on_item}
        )
        worker.start()
        mid = send_alert(s)
        assert arrived.wait(30)
        stop.set()
        worker.join(30)
        assert not worker.is_alive()
        assert [r.mid for r in got] == [mid]
        assert puller.cursor() == str(got[0].seq)
        # Nothing left behind, nothing settled twice.
        assert InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox").pull() == []


def test_retry_after_is_honoured_and_bounded() -> None:
    backoff = Backoff(base_s=1, cap_s=8, max_retry_after_s=60)
    assert all(0.5 <= backoff.delay(1) <= 1 for _ in range(20))
    assert all(4 <= backoff.delay(10) <= 8 for _ in range(20))
    assert backoff.delay(1, retry_after=30) == 30
    assert backoff.delay(1, retry_after=10**9) == 60


def test_retry_after_takes_ascii_digits_only() -> None:
    def answer(value: str) -> int | None:
        transport = httpx2.MockTransport(
            lambda r: httpx2.Response(503, json={}, headers={"Retry-After": value.encode()})
        )
        client = BrokerClient("http://broker.test", "t", transport=transport)
        with client, pytest.raises(BrokerAPIError) as info:
            client.inbox()
        return info.value.retry_after

    assert answer("7") == 7
    assert answer("\u0667") is None  # Arabic-Indic seven: isdigit() but not a delay
    assert answer("Wed, 21 Oct 2026 07:28:00 GMT") is None


def test_an_interrupt_while_settling_waits_for_the_item() -> None:
    done = []

    def settle() -> None:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("settled")  # not cut short by the signal

    with pytest.raises(KeyboardInterrupt):
        settle()
    assert done == ["settled"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_table_times_are_iso_utc() -> None:
    from broker.cli import output

    assert output.iso(1_800_000_000) == "2027-01-15T08:00:00Z"
    assert output.iso(1_800_000_000_123) == "2027-01-15T08:00:00Z"  # epoch milliseconds
    assert output.iso("2026-12-07T15:15:15.123+01:00") == "2026-12-07T14:15:15Z"
    assert output.iso("2026-12-07") == "2026-12-07"  # a date stays a date
    assert output.iso(None) is None
    assert output.cell(["a", "b"]) == "a, b"
    assert output.cell(True) == "yes"
    assert output.cell(None) == ""
