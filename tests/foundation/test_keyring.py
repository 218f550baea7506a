"""The broker's own keys are made exactly once per keys folder, whoever starts first, and a
rotation is seen by every process without a restart (tests/audit/test_broker_key_rotation.py
rotates through the CLI and the log)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker import config, keyring
from broker.config import settings
from broker.crypto import keys

# Each process waits for GO, then loads or makes the keys as the API's and a worker's start-up
# do, and prints the public halves it would sign with.
CHILD = """
import json, os, sys, time
from pathlib import Path
from broker import keyring
from broker.config import settings
settings()
print("ready", flush=True)
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.0005)
k = keyring.load_or_create()
print(json.dumps({"receipt": k.receipt.kid, "log": k.log_verifier_key}))
"""


def test_processes_starting_together_make_one_receipt_key_and_one_log_key(
    tmp_path: Path,
) -> None:
    folder, go = tmp_path / "keys", tmp_path / "go"
    env = {**os.environ, "BROKER_KEYS_DIR": str(folder), "BROKER_DATA_DIR": str(tmp_path)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(go)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for child in children:  # every child imported and waiting: they start at the same instant
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    go.touch()
    seen = [json.loads(c.communicate(timeout=60)[0]) for c in children]
    assert [c.returncode for c in children] == [0, 0, 0]
    assert len({s["receipt"] for s in seen}) == 1, seen
    assert len({s["log"] for s in seen}) == 1, seen
    assert len(list(folder.glob(f"{keyring.RECEIPT_OWNER}-sig-*.p8.pem"))) == 1
    assert len(list(folder.glob(f"{keyring.LOG_OWNER}-sig-*.p8.pem"))) == 1
    assert not list(folder.glob(".tmp-*"))


def test_a_folder_with_two_current_keys_of_a_kind_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    passphrase = settings().key_passphrase
    for _ in range(2):
        keys.save_private_key(keys.SigningKey.generate(), folder, keyring.RECEIPT_OWNER, passphrase)
    with pytest.raises(keyring.KeyringError, match="2 current broker-receipt keys"):
        keyring._load_or_make(folder, keyring.RECEIPT_OWNER, passphrase)


def test_serve_refuses_two_current_keys_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    passphrase = settings().key_passphrase
    for _ in range(2):
        keys.save_private_key(keys.SigningKey.generate(), folder, keyring.LOG_OWNER, passphrase)
    env = {**os.environ, "BROKER_KEYS_DIR": str(folder), "BROKER_DATABASE_URL": ""}
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1
    assert "2 current broker-log keys" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_rotation_is_loaded_without_a_restart_and_an_undo_restores_the_old_key(
    tmp_path: Path,
) -> None:
    before = list(config._override)
    config.configure(**{**settings().model_dump(), "keys_dir": tmp_path / "keys"})
    try:
        first = keyring.load_or_create()
        assert keyring.load_or_create() is first  # nothing changed: the cached keys
        with keyring.rotating("receipt") as rotation:
            assert rotation.old.kid == first.receipt.kid
            rotation.install()
        second = keyring.load_or_create()
        assert second.receipt.kid == rotation.new.kid != first.receipt.kid
        assert second.log.kid == first.log.kid
        folder = tmp_path / "keys"
        retired = folder / keyring.RETIRED
        assert [k.kid for k in keyring.retired_keys("receipt")] == [first.receipt.kid]
        assert len(list(folder.glob(f"{keyring.RECEIPT_OWNER}-sig-*.p8.pem"))) == 1
        rotation.undo()
        assert keyring.load_or_create().receipt.kid == first.receipt.kid
        assert not list(retired.glob("*.p8.pem"))
    finally:
        config._override[:] = before


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(keyring.KeyringError, match="use one of receipt, log"),
        keyring.rotating("signing"),
    ):
        pass


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_two_apis_and_a_worker_started_at_once_end_with_one_key_of_each(
    clean_db: str, redis_url: str, tmp_path: Path
) -> None:
    """The deployment itself, not the function: `broker serve` twice and `broker worker`, the
    production profile, started together on an empty keys folder; each takes the folder's
    lock at start-up (`_require_keys`), so all three run, on the same two keys."""
    from tests.conftest import free_port
    from tests.inbox.stack import ROOT, Proc, Stack, wait_until

    folder = tmp_path / "keys"
    stack = Stack(
        database_url=settings().sqlalchemy_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        keys_dir=folder,
    )
    broker = str(ROOT / ".venv" / "bin" / "broker")
    ports = [free_port(), free_port()]
    commands = {
        **{f"api-{p}": [broker, "serve", "--port", str(p)] for p in ports},
        "worker": [broker, "worker", "--concurrency", "1", "--queues", "celery"],
    }
    env = stack.env(BROKER_HOST="127.0.0.1")
    procs = []
    try:
        for name, argv in commands.items():  # back to back: no process waits for another
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            procs.append(Proc(name, popen, log))
        stack.procs.extend(procs)

        def serving(port: int) -> bool:
            import httpx2

            try:
                return httpx2.get(f"http://127.0.0.1:{port}/health/live", timeout=2).is_success
            except httpx2.TransportError:
                return False

        for port in ports:
            wait_until(lambda port=port: serving(port), 60, f"the API on {port}")
        worker = procs[-1]
        wait_until(lambda: " ready." in worker.text() or not worker.alive(), 60, "the worker")
        dead = [p.name + ":\n" + p.text()[-2000:] for p in procs if not p.alive()]
        assert not dead, dead
        assert len(list(folder.glob(f"{keyring.RECEIPT_OWNER}-sig-*.p8.pem"))) == 1
        assert len(list(folder.glob(f"{keyring.LOG_OWNER}-sig-*.p8.pem"))) == 1
    finally:
        stack.close()
