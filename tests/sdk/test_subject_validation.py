"""The SDK refuses an invalid subject before anything is encrypted or sent (issue 21.2): CITES
appendices, CAS numbers and units are checked by `routing_for`, every bad field named by its
JSON Pointer; the CLI says so in one line. No broker runs here."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, NoReturn

import pytest
from typer.testing import CliRunner

from broker import schemas
from broker.cli.main import app
from broker.crypto import envelope
from broker.crypto.keys import SigningKey, generate_passphrase
from broker.sdk import agent
from broker.sdk.client import BrokerClient
from broker.sdk.keystore import Keystore

FP = "VN-GDC/fp-hcm-01"
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port
EXAMPLES = schemas.load("body/subject")["examples"]
IVORY = next(s for s in EXAMPLES if s["type"] == "shipment" and "cites" in s)
PRECURSOR = next(s for s in EXAMPLES if s["type"] == "incident")


def _alert(*subjects: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": "Test alert",
        "summary": "Fictional.",
        "subjects": copy.deepcopy(list(subjects)),
    }


def _bad_ivory() -> dict[str, Any]:
    body = _alert(IVORY)
    body["subjects"][0]["cites"][0]["appendix"] = "IV"
    return body


def _bad_cas() -> dict[str, Any]:
    body = _alert(PRECURSOR)
    body["subjects"][0]["substances"][0]["cas"] = "103-79-8"
    return body


def _bad_unit() -> dict[str, Any]:
    body = _alert(PRECURSOR)
    body["subjects"][0]["substances"][0]["quantity"]["unit"] = "bags"
    return body


BAD = [
    pytest.param(_bad_ivory(), "cites_wildlife", "/subjects/0/cites/0/appendix", id="appendix-IV"),
    pytest.param(_bad_cas(), "precursors", "/subjects/0/substances/0/cas", id="cas-check-digit"),
    pytest.param(
        _bad_unit(), "precursors", "/subjects/0/substances/0/quantity/unit", id="unit-bags"
    ),
]


@pytest.fixture
def no_encryption(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Encrypting fails the test; the list records any attempt that was caught elsewhere."""
    attempts: list[str] = []

    def refuse(*_: Any, **__: Any) -> NoReturn:
        attempts.append("build_envelope")
        raise AssertionError("the body was encrypted although it is invalid")

    monkeypatch.setattr(envelope, "build_envelope", refuse)
    return attempts


def _routing(body: dict[str, Any], offence: str) -> dict[str, Any]:
    return agent.routing_for(
        FP, recipients=["HK-CED"], agreement="VN-HK-CMAA-2013", offence=offence, body=body
    )


def test_valid_bodies_pass_with_incident_declared() -> None:
    routing = _routing(_alert(IVORY), "cites_wildlife")
    assert routing["subject_types"] == ["shipment"]
    routing = _routing(_alert(PRECURSOR, IVORY), "precursors")
    assert routing["subject_types"] == ["incident", "shipment"]


@pytest.mark.parametrize(("body", "offence", "pointer"), BAD)
def test_routing_for_refuses_before_encryption(
    body: dict[str, Any], offence: str, pointer: str, no_encryption: list[str]
) -> None:
    with pytest.raises(schemas.SchemaError) as caught:
        _routing(body, offence)
    assert [e.pointer for e in caught.value.errors] == [pointer]
    assert caught.value.schema == "v1/body/alert"
    assert no_encryption == []


class _NoBroker:
    """A client every call to which fails the test: nothing may reach a broker."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"the SDK called the broker ({name}) with an invalid body")


@pytest.mark.parametrize(("body", "offence", "pointer"), BAD)
def test_compose_refuses_before_asking_the_broker_or_encrypting(
    body: dict[str, Any], offence: str, pointer: str, no_encryption: list[str]
) -> None:
    with pytest.raises(schemas.SchemaError) as caught:
        agent.compose(
            _NoBroker(),  # type: ignore[arg-type]
            SigningKey.generate(),
            sender_fp=FP,
            body=body,
            recipients=["HK-CED"],
            agreement="VN-HK-CMAA-2013",
            offence=offence,
        )
    assert [e.pointer for e in caught.value.errors] == [pointer]
    assert no_encryption == []


# --- The CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A keystore with one signing key of FP, and no broker settings from the environment."""
    for name in ("BROKER_TOKEN", "BROKER_URL", "BROKER_KEYSTORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_KEY_PASSPHRASE", generate_passphrase())
    keys = tmp_path / "keys"
    generated = CliRunner().invoke(app, ["keys", "generate", FP, "--keystore", str(keys)])
    assert generated.exit_code == 0, generated.output
    return keys


def _send(keys: Path, body: dict[str, Any], offence: str) -> Any:
    path = keys.parent / "body.json"
    path.write_text(json.dumps(body))
    argv = ["send", str(path), "--from", FP, "--to", "HK-CED", "--agreement", "VN-HK-CMAA-2013"]
    argv += ["--offence", offence, "--url", DOWN, "--token", "brk_x", "--keystore", str(keys)]
    return CliRunner().invoke(app, argv)


def _error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: BODY ")
    return str(line)


@pytest.mark.parametrize(("body", "offence", "pointer"), BAD)
def test_cli_send_names_the_field_in_one_line(
    body: dict[str, Any],
    offence: str,
    pointer: str,
    cli_keystore: Path,
    no_encryption: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`broker send` reads the signing key's directory entry before composing (stubbed here
    with the local key shown active); the body is refused before any other broker call."""
    [key] = Keystore.open(cli_keystore).stored_keys(FP, "sig")
    kid = key.kid
    entry = {"kid": kid, "use": "sig", "agency": "VN-GDC", "focal_point": FP, "status": "active"}
    entry |= {"nbf": 0, "exp": 2**40}
    monkeypatch.setattr(BrokerClient, "jwks", lambda self, agency=None: [entry])
    monkeypatch.setattr(BrokerClient, "check", _NoBroker().__getattr__)
    line = _error_line(_send(cli_keystore, body, offence))
    assert f" {pointer} " in line
    assert line.endswith(": fix the file")
    if pointer.endswith("/cas"):
        assert '"103-79-8" is not a valid cas: check digit should be 7 (103-79-7)' in line
    assert no_encryption == []


def test_cli_send_refuses_an_invalid_body_without_any_broker(cli_keystore: Path) -> None:
    _error_line(_send(cli_keystore, _bad_cas(), "precursors"))
