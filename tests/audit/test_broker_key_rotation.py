"""Rotating the broker's own keys: recorded on the log, signed by the old key, followed by
verifiers pinned to the old key, and old receipts and checkpoints still verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker import config, keyring
from broker.audit import keyrotation, verify
from broker.cli.main import app as cli
from broker.crypto import envelope as env
from broker.crypto import keys, note
from broker.crypto.errors import CryptoError
from broker.sdk import logcheck
from tests.audit.conftest import decode, leaves_of, record, sequence_all
from tests.audit.test_verify_cli import Borrowed, run
from tests.sdk.conftest import agency_side  # noqa: F401 (the SDK's live broker and keystore)
from tests.sdk.test_officer import send_alert

runner = CliRunner()


@pytest.fixture
def keys_dir(clean_db: str, tmp_path: Path) -> Iterator[Path]:
    """A keys folder of this test's own: rotations never touch the session's keys."""
    before = list(config._override)
    folder = tmp_path / "broker-keys"  # tmp_path / "keys" is the agency side's keystore
    config.configure(**{**config.settings().model_dump(), "keys_dir": folder})
    yield folder
    config._override[:] = before


@pytest.fixture
def auditor(api: Any, keys_dir: Path, token_for: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """An oversight auditor's token; `broker audit verify` talks to the app through `api`."""
    monkeypatch.setattr(verify, "open_http", lambda base_url: Borrowed(api))
    return str(token_for("auditor"))


def rotate(kind: str) -> dict[str, Any]:
    result = runner.invoke(cli, ["admin", "broker-keys", "rotate", "--kind", kind])
    assert result.exit_code == 0, result.output
    rotated: dict[str, Any] = json.loads(result.stdout)
    return rotated


def audit_verify(token: str, log_key: str, *args: str) -> Any:
    """`broker audit verify` against the test app (test_verify_cli's runner)."""
    return run(token, log_key, *args)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def current_files(folder: Path, owner: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{owner}-sig-*.p8.pem"))


class TestLogKeyRotation:
    def test_old_checkpoints_verify_with_the_old_key_and_new_ones_with_the_new(
        self, api: Any, auditor: str, keys_dir: Path, tmp_path: Path
    ) -> None:
        old_key = keyring.load_or_create().log_verifier_key
        record(12)
        sequence_all()
        state = tmp_path / "state.json"
        first = audit_verify(auditor, old_key, "--state", str(state))
        assert first.exit_code == 0, first.output
        before = api.get("/v1/log/checkpoint", headers=headers(auditor)).text

        rotated = rotate("log")
        assert rotated["old_vkey"] == old_key
        new_key = keyring.load_or_create().log_verifier_key
        assert rotated["new_vkey"] == new_key != old_key
        record(5)
        sequence_all()
        after = api.get("/v1/log/checkpoint", headers=headers(auditor)).text

        old, new = note.parse_verifier_key(old_key), note.parse_verifier_key(new_key)
        assert note.verify_checkpoint(before, old).size >= 12
        assert note.verify_checkpoint(after, new).size == rotated["index"] + 1 + 5
        with pytest.raises(note.NoteError):
            note.verify_checkpoint(after, old)  # the old key signs nothing after the handover
        handover = api.get(
            "/v1/log/checkpoint", params={"size": rotated["index"] + 1}, headers=headers(auditor)
        ).text
        assert note.verify_checkpoint(handover, old).size == rotated["index"] + 1
        with pytest.raises(note.NoteError):
            note.verify_checkpoint(handover, new)

        # Pinned to the old key, with the state kept before: follows the signed rotation.
        again = audit_verify(auditor, old_key, "--state", str(state), "--full")
        assert again.exit_code == 0, again.output
        assert "log key rotated 1 time(s)" in again.output
        assert "full:" in again.output
        # The state now holds a checkpoint of the new key; the old pin still reads it.
        record(2)
        sequence_all()
        third = audit_verify(auditor, old_key, "--state", str(state))
        assert third.exit_code == 0, third.output
        assert "consistent with the stored checkpoint" in third.output
        # Pinned to the new key: nothing to follow.
        fresh = audit_verify(auditor, new_key, "--index", str(rotated["index"]))
        assert fresh.exit_code == 0, fresh.output

    def test_the_rotation_leaf_is_on_the_log_and_signed_by_the_old_key(
        self, api: Any, auditor: str, keys_dir: Path
    ) -> None:
        old = keyring.load_or_create().log
        record(3)
        rotated = rotate("log")
        sequence_all()
        leaves = [decode(item) for item in leaves_of(api, headers(auditor))]
        (leaf,) = [doc for doc in leaves if doc["kind"] == "log.key_rotated"]
        index = rotated["index"]
        assert leaf["index"] == index
        # After every event recorded before it: the old key signed all of them.
        assert [d["index"] for d in leaves if d["kind"] == "test.event"] == [
            index - 3,
            index - 2,
            index - 1,
        ]
        assert leaf["key"] == "log"
        assert leaf["old_kid"] == old.kid
        payload = verify.check_rotation_statement(leaf["statement"], old.public.jwk)
        assert payload["new_vkey"] == keyring.load_or_create().log_verifier_key
        assert payload["old_vkey"] == leaf["old_vkey"] == rotated["old_vkey"]
        # Published: both keys with the sizes they sign, and the rotation's leaf.
        doc = api.get("/v1/log/key", params={"format": "json"}, headers=headers(auditor)).json()
        assert [(k["status"], k["first_size"], k["last_size"]) for k in doc["keys"]] == [
            ("retired", 0, index + 1),
            ("current", index + 2, None),
        ]
        assert doc["keys"][0]["vkey"] == rotated["old_vkey"]
        assert doc["rotations"][0]["statement"] == leaf["statement"]
        text = api.get("/v1/log/key", headers=headers(auditor)).text
        assert text.strip() == doc["current"] == rotated["new_vkey"]
        broker = api.get("/v1/directory/broker", headers=headers(auditor)).json()
        assert broker["log_key"] == rotated["new_vkey"]
        assert [k["status"] for k in broker["log_keys"]] == ["retired", "current"]
        # The old key file is kept, for verification, in retired/.
        assert (keys_dir / keyring.RETIRED / keys.key_file_name(keyring.LOG_OWNER, old)).exists()

    def test_a_switch_the_old_key_did_not_sign_is_refused(
        self, api: Any, auditor: str, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old_key = keyring.load_or_create().log_verifier_key
        record(3)
        rotate("log")
        record(2)
        sequence_all()
        # The broker shows no rotation: the pinned key does not sign the latest checkpoint.
        real = keyrotation.history
        monkeypatch.setattr(keyrotation, "history", lambda session: _none())
        hidden = audit_verify(auditor, old_key)
        assert hidden.exit_code == 1
        assert "does not verify" in hidden.output
        # The broker shows a rotation signed by another key than the pinned one.
        forger = keys.SigningKey.generate()

        async def forged(session: Any) -> list[dict[str, Any]]:
            items = await real(session)
            for item in items:
                _head, body, _ = item["statement"].split(".")
                payload = json.loads(keys.b64u_decode(body))
                item["statement"] = env.sign_compact(payload, forger, verify.ROTATION_TYP)
            return items

        monkeypatch.setattr(keyrotation, "history", forged)
        refused = audit_verify(auditor, old_key)
        assert refused.exit_code == 1
        assert "not signed by the retired key" in refused.output


async def _none() -> list[dict[str, Any]]:
    return []


def test_the_broker_s_own_checks_follow_a_rotation(api: Any, keys_dir: Path) -> None:
    """The console's "verify now" and the invariant check read the store (`StoredLog`), not
    HTTP: pinned to the key before a rotation and given a checkpoint of then, they follow the
    signed rotation as a partner's verifier does, instead of failing on the new signature."""
    from broker import db
    from broker.audit import log

    old_key = keyring.load_or_create().log_verifier_key
    record(4)
    sequence_all()
    before = db.call(lambda s: log.StoredLog(s, None).checkpoint())
    size = note.verify_checkpoint(before, note.parse_verifier_key(old_key)).size
    rotated = rotate("log")
    record(3)
    sequence_all()
    report = db.call(lambda s: log.verify_stored(s, old_key, full=True, previous=before))
    assert report.size == rotated["index"] + 1 + 3 > size
    assert report.keys == [old_key, rotated["new_vkey"]]


class TestReceiptKeyRotation:
    def test_a_receipt_made_before_the_rotation_verifies_with_the_published_old_key(
        self, api: Any, auditor: str, keys_dir: Path
    ) -> None:
        old = keyring.load_or_create().receipt
        payload = {"v": 1, "mid": "m", "sender": "VN-GDC", "envelope_sha256": "x"}
        receipt = env.sign_compact(payload, old, env.TYP_RECEIPT)
        rotated = rotate("receipt")
        assert rotated["old_kid"] == old.kid
        new = keyring.load_or_create().receipt
        assert new.kid == rotated["new_kid"] != old.kid
        broker = api.get("/v1/directory/broker", headers=headers(auditor)).json()
        assert broker["receipt_key"] == new.public.jwk
        assert [(k["kid"], k["status"]) for k in broker["receipt_keys"]] == [
            (old.kid, "retired"),
            (new.kid, "current"),
        ]
        assert broker["receipt_keys"][0]["valid_until"] == broker["receipt_keys"][1]["valid_from"]
        with pytest.raises(CryptoError):
            env.verify_compact(receipt, broker["receipt_key"], env.TYP_RECEIPT)
        key = logcheck.receipt_key(broker, receipt)
        assert env.verify_compact(receipt, key, env.TYP_RECEIPT) == payload
        # New receipts are signed by the new key (this process noticed the rotation).
        assert keyring.load_or_create().receipt.kid == new.kid
        # The rotation is on the log, signed by the old receipt key.
        sequence_all()
        (leaf,) = [
            decode(i)
            for i in leaves_of(api, headers(auditor))
            if decode(i)["kind"] == "log.key_rotated"
        ]
        assert leaf["key"] == "receipt"
        assert verify.check_rotation_statement(leaf["statement"], old.public.jwk)["new_kid"] == (
            new.kid
        )
        # The log key did not change.
        assert len(broker["log_keys"]) == 1
        listed = runner.invoke(cli, ["admin", "broker-keys", "list"])
        assert listed.exit_code == 0, listed.output
        assert json.loads(listed.stdout)["receipt_keys"] == broker["receipt_keys"]


class TestAgencySide:
    def test_the_inbox_log_check_pinned_to_the_old_keys_follows_both_rotations(
        self,
        keys_dir: Path,
        agency_side: dict[str, Any],  # noqa: F811
    ) -> None:
        from broker.sdk.agent import InboxPuller
        from broker.sdk.client import BrokerClient
        from broker.sdk.keystore import Keystore

        s = agency_side
        old_key = keyring.load_or_create().log_verifier_key

        def pull() -> list[tuple[str, str]]:
            with BrokerClient(s["url"], s["hk"]) as client:
                store = Keystore.open(s["keys"]).with_directory(client)
                puller = InboxPuller(client, store, "HK-CED", s["tmp"] / "inbox", log_key=old_key)
                return [(r.mid, r.status) for r in puller.pull()]

        first = send_alert(s)
        assert pull() == [(first, "decrypted")]
        second = send_alert(s)  # its receipt is signed by the receipt key about to retire
        rotate("receipt")
        rotated = rotate("log")
        third = send_alert(s)
        # Receipt by the retired key, leaves in checkpoints of the new log key, a kept
        # checkpoint of the old one: all proven with the old pin and the signed rotation.
        assert sorted(pull()) == sorted([(second, "decrypted"), (third, "decrypted")])
        kept = json.loads((s["tmp"] / "inbox" / "log" / "checkpoint.json").read_text())
        new = note.parse_verifier_key(rotated["new_vkey"])
        assert note.verify_checkpoint(kept["checkpoint"], new).size > rotated["index"] + 1


class TestRefusals:
    def test_a_bad_kind_ends_in_one_line_naming_the_option(self, keys_dir: Path) -> None:
        for args in (["--kind", "recipt"], []):
            result = runner.invoke(cli, ["admin", "broker-keys", "rotate", *args])
            assert result.exit_code == 2, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith("error: ")
            assert "--kind" in lines[0]
            assert "Traceback" not in result.output
        assert (
            "did you mean receipt?"
            in runner.invoke(cli, ["admin", "broker-keys", "rotate", "--kind", "recipt"]).stderr
        )

    def test_two_current_keys_are_refused_in_one_line(self, keys_dir: Path) -> None:
        keyring.load_or_create()
        passphrase = config.settings().key_passphrase
        keys.save_private_key(keys.SigningKey.generate(), keys_dir, keyring.LOG_OWNER, passphrase)
        result = runner.invoke(cli, ["admin", "broker-keys", "rotate", "--kind", "log"])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "2 current broker-log keys" in lines[0], result.stderr
        assert len(current_files(keys_dir, keyring.LOG_OWNER)) == 2  # nothing moved
        assert not (keys_dir / keyring.RETIRED).exists()


# Holds the keys folder's lock (as a starting API process or another rotation does) until
# the file named by argv[2] exists; says "held" once it has it.
HOLDER = """
import fcntl, os, sys, time
from pathlib import Path
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
os.close(fd)
"""


class TestLock:
    def test_a_rotation_waits_while_another_process_holds_the_lock(
        self, keys_dir: Path, tmp_path: Path
    ) -> None:
        keyring.load_or_create()
        old = current_files(keys_dir, keyring.LOG_OWNER)
        release = tmp_path / "release"
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(keys_dir / keyring.LOCK_FILE), str(release)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        results: list[Any] = []
        rotating = threading.Thread(
            target=lambda: results.append(
                runner.invoke(cli, ["admin", "broker-keys", "rotate", "--kind", "log"])
            )
        )
        rotating.start()
        rotating.join(2.0)
        # Still waiting for the lock: nothing moved, no second current key.
        assert rotating.is_alive()
        assert current_files(keys_dir, keyring.LOG_OWNER) == old
        assert not (keys_dir / keyring.RETIRED).exists()
        release.touch()
        rotating.join(120)
        holder.communicate(timeout=60)
        assert holder.returncode == 0
        (done,) = results
        assert done.exit_code == 0, done.output
        now = current_files(keys_dir, keyring.LOG_OWNER)
        assert len(now) == 1
        assert now != old
        assert sorted(p.name for p in (keys_dir / keyring.RETIRED).glob("*.p8.pem")) == old

    def test_another_process_notices_the_rotation(self, keys_dir: Path, tmp_path: Path) -> None:
        keyring.load_or_create()
        go = tmp_path / "go"
        child = subprocess.Popen(
            [sys.executable, "-c", NOTICER, str(go)],
            env={
                **os.environ,
                "BROKER_KEYS_DIR": str(keys_dir),
                "BROKER_KEY_PASSPHRASE": config.settings().key_passphrase,
                "BROKER_DATA_DIR": str(tmp_path),
            },
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        before = child.stdout.readline().strip()
        assert before == keyring.load_or_create().log.kid
        rotated = rotate("log")
        go.touch()
        after = child.communicate(timeout=60)[0].strip()
        assert child.returncode == 0
        assert (before, after) == (rotated["old_kid"], rotated["new_kid"])


# Loads the keys, says which log key signs, waits for GO, and says again (no restart).
NOTICER = """
import sys, time
from pathlib import Path
from broker import keyring
print(keyring.load_or_create().log.kid, flush=True)
while not Path(sys.argv[1]).exists():
    time.sleep(0.01)
print(keyring.load_or_create().log.kid, flush=True)
"""
