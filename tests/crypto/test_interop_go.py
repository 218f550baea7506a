"""Interop with Go's golang.org/x/mod/sumdb/note: it verifies the broker's cosigned checkpoints.

The Go side is tests/interop/go/cosigned.go: `note.Open` with `note.NewVerifier` for the log
key and its own cosignature/v1 verifier for witness keys, written from the C2SP spec (not from
our code). Run in GOPATH mode against Debian's golang-golang-x-mod-dev (or GOPATH=...). Without
`go` or the package these tests skip, except under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from broker.crypto import note
from tests.audit.conftest import api, log_key, sequence_all  # noqa: F401 - fixtures
from tests.conftest import bearer
from tests.crypto.test_note import (
    COSIGNER,
    EXAMPLE_KEY,
    EXAMPLE_NOTE,
    EXAMPLE_VKEY,
    KAT_LINE,
    ORIGIN,
    T0,
)

SCRIPT = Path(__file__).resolve().parents[1] / "interop" / "go" / "cosigned.go"
GOPATH = os.environ.get("GOPATH", "/usr/share/gocode")


@pytest.fixture(scope="module")
def go(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The `go` binary and its environment, or a skip (a failure under CI=true)."""
    binary = shutil.which("go")
    package = Path(GOPATH) / "src" / "golang.org" / "x" / "mod" / "sumdb" / "note"
    if binary is None:
        reason = "go is not installed"
    elif not package.is_dir():
        reason = f"golang.org/x/mod is not in {GOPATH} (apt install golang-golang-x-mod-dev)"
    else:
        cache = tmp_path_factory.mktemp("gocache")
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(cache)}
        built = tmp_path_factory.mktemp("gobin") / "cosigned"
        done = subprocess.run(
            [binary, "build", "-o", str(built), str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return {"binary": str(built)}
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def go_open(go: dict[str, str], text: str, log_vkey: str, witnesses: list[str]) -> Any:
    """What Go's note.Open makes of `text`; raises with Go's error when it refuses."""
    done = subprocess.run(
        [go["binary"]],
        input=json.dumps({"note": text, "log_key": log_vkey, "witness_keys": witnesses}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"go refused: {done.stderr.strip()}")
    return json.loads(done.stdout)


def test_go_verifies_the_known_answer(go: dict[str, str]) -> None:
    cosigned = EXAMPLE_NOTE + KAT_LINE + "\n"
    opened = go_open(go, cosigned, EXAMPLE_VKEY, [COSIGNER.verifier_key])
    assert opened["text"] == EXAMPLE_NOTE.split("\n\n")[0] + "\n"
    assert [(v["name"], v["timestamp"]) for v in opened["verified"]] == [
        (ORIGIN, None),
        (COSIGNER.name, T0),
    ]
    assert opened["verified"][1]["key_id"] == COSIGNER.key_id.hex()


def _flip(line: str, at: int) -> str:
    name, b64 = line.removeprefix(note.SIG_PREFIX).split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 1
    return f"{note.SIG_PREFIX}{name} {base64.b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize(("what", "at"), [("signature", -1), ("timestamp", 11)])
def test_go_refuses_a_tampered_cosignature(go: dict[str, str], what: str, at: int) -> None:
    tampered = EXAMPLE_NOTE + _flip(KAT_LINE, at) + "\n"
    with pytest.raises(AssertionError, match="invalid signature"):
        go_open(go, tampered, EXAMPLE_VKEY, [COSIGNER.verifier_key])
    # Unpinned, the witness's line is only an unknown signature: the log's still verifies.
    assert [v["name"] for v in go_open(go, tampered, EXAMPLE_VKEY, [])["verified"]] == [ORIGIN]


def test_go_checks_extension_lines_and_key_types(go: dict[str, str]) -> None:
    root = base64.b64decode(EXAMPLE_NOTE.split("\n")[2])
    text = note.Checkpoint(ORIGIN, 8, root, ("extension: one",)).format()
    signed = note.sign_note(text, ORIGIN, EXAMPLE_KEY)
    line = note.cosign(signed, COSIGNER, T0)
    opened = go_open(go, note.add_signatures(signed, [line]), EXAMPLE_VKEY, [COSIGNER.verifier_key])
    assert opened["text"] == text
    assert opened["verified"][1]["timestamp"] == T0
    # The witness's line over another extension line, beside the log's own valid signature.
    other = note.Checkpoint(ORIGIN, 8, root, ("extension: two",)).format()
    moved = note.sign_note(other, ORIGIN, EXAMPLE_KEY) + line + "\n"
    with pytest.raises(AssertionError, match="invalid signature"):
        go_open(go, moved, EXAMPLE_VKEY, [COSIGNER.verifier_key])
    # A note key (type 0x01) is no witness key.
    with pytest.raises(AssertionError, match="not a cosignature/v1"):
        go_open(go, EXAMPLE_NOTE, EXAMPLE_VKEY, [EXAMPLE_VKEY])


def test_go_verifies_what_the_broker_serves(
    go: dict[str, str],
    api: Any,  # noqa: F811 - the fixture imported above
    world: dict[str, Any],
    token_for: Any,
    log_key: str,  # noqa: F811
) -> None:
    """Two witnesses cosign through the API; Go verifies the checkpoint the broker serves."""
    admin = bearer(token_for("admin"))
    signers = []
    for agency, name in (("HK-CED", "hk-ced.example/witness"), ("VN-GDC", "vn-gdc.example/w")):
        signer = note.Cosigner.generate(name)
        registered = api.post(
            "/v1/admin/witnesses", json={"vkey": signer.verifier_key, "agency": agency},
            headers=admin,
        )  # fmt: skip
        assert registered.status_code == 201, registered.text
        signers.append((agency, signer))
    sequence_all()
    served = api.get("/v1/log/checkpoint", headers=admin).text
    size = note.Checkpoint.parse(served.split("\n\n")[0] + "\n").size
    now = int(time.time())
    for agency, signer in signers:
        headers = bearer(token_for("agency", agency_id=agency))
        body = {"checkpoint": note.add_signatures(served, [note.cosign(served, signer, now)])}
        assert api.post("/v1/log/cosignatures", json=body, headers=headers).status_code == 200
    cosigned = api.get("/v1/log/checkpoint", params={"cosigned": 2}, headers=admin).text
    vkeys = [signer.verifier_key for _, signer in signers]
    opened = go_open(go, cosigned, log_key, vkeys)
    assert note.Checkpoint.parse(opened["text"]).size == size
    assert sorted((v["name"], v["timestamp"]) for v in opened["verified"][1:]) == [
        ("hk-ced.example/witness", now),
        ("vn-gdc.example/w", now),
    ]
    tampered = cosigned.replace(cosigned.splitlines()[-1], _flip(cosigned.splitlines()[-1], 20))
    with pytest.raises(AssertionError, match="invalid signature"):
        go_open(go, tampered, log_key, vkeys)
