"""Every python block of the SDK guide (docs/sdk.md) runs, in order, against a live broker, with
only the agency side importable and the environment the guide tells the reader to set."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx2
import pytest

from broker.config import settings
from broker.crypto.keys import generate_passphrase

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "sdk.md"
WITHOUT_SERVER = ROOT / "tests" / "sdk" / "without_server.py"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_every_block_is_collected() -> None:
    assert len(blocks("python")) == 6
    assert blocks("sh") == ["pip install exchange-broker\n"]


def test_the_install_line_names_the_package_without_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert blocks("sh")[0].split() == ["pip", "install", project["name"]]


def test_the_guide_uses_only_the_public_sdk() -> None:
    import broker.sdk
    import broker.sdk.agent

    public = {"broker.sdk": set(broker.sdk.__all__), "broker.sdk.agent": set(dir(broker.sdk.agent))}
    used: list[tuple[str, str]] = []
    for block in blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("broker")], block
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("broker"):
                used += [(str(node.module), a.name) for a in node.names]
    assert used
    assert [(m, n) for m, n in used if n not in public.get(m, set())] == []
    # The names the guide's introduction lists are the ones the blocks may import.
    for name in broker.sdk.__all__:
        assert f"`{name}`" in GUIDE.read_text()


class Python:
    """Runs a block in a fresh interpreter where no package of the `server` extra imports."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, code: str, *, cwd: Path, **env: str) -> str:
        cwd.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, str(WITHOUT_SERVER), "-c", code],
            cwd=cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            f"{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
        return result.stdout


@pytest.fixture
def python(live_url: str, world: dict[str, Any]) -> Python:
    from broker import keyring

    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_URL=live_url,
        BROKER_KEY_PASSPHRASE=generate_passphrase(),
        # As in test_guides: a subprocess that issued or checked a token would need the same pepper
        # as the live broker.
        BROKER_TOKEN_PEPPER=settings().token_pepper,
        BROKER_LOG_LEVEL="WARNING",
        # The log key an agency pins from the agreement annex.
        BROKER_LOG_KEY=keyring.load_or_create().log_verifier_key,
    )
    return Python(env)


def register(url: str, admin: str, owner: str, jwk: dict[str, Any]) -> None:
    """What the registrar does with the public JWK a focal point or agency hands over."""
    body = {
        "agency_id": owner.split("/")[0],
        "focal_point_id": owner if "/" in owner else None,
        "jwk": jwk,
    }
    answer = httpx2.post(
        f"{url}/v1/admin/keys", json=body, headers={"Authorization": f"Bearer {admin}"}
    )
    assert answer.status_code < 300, answer.text
    assert answer.json()["status"] == "active"


def test_the_guide_runs_against_a_live_broker(
    python: Python, live_url: str, token_for: Any, tmp_path: Path
) -> None:
    from broker.sdk import Keystore

    keys, open_store, send, pull, status, errors = blocks("python")
    admin = token_for("admin")
    # Two machines: the focal point's and the partner agency's, each with its keystore.
    vn, hk = tmp_path / "vn-gdc", tmp_path / "hk-ced"
    sender = {
        "BROKER_TOKEN": token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01"),
        "BROKER_KEYSTORE": str(vn / "keys"),
    }
    receiver = {
        "BROKER_TOKEN": token_for("agency", agency_id="HK-CED"),
        "BROKER_KEYSTORE": str(hk / "keys"),
    }
    generated = json.loads(python.run(keys, cwd=vn, **sender))
    assert Path(generated["file"]).is_file()
    register(live_url, admin, "VN-GDC/fp-hcm-01", generated["jwk"])
    # The partner's keys, as the guide's text says (its key block is the focal point's).
    store = Keystore.open(hk / "keys", python.env["BROKER_KEY_PASSPHRASE"])
    for use in ("enc", "sig"):
        register(live_url, admin, "HK-CED", store.generate("HK-CED", use)[1].public.jwk)

    opened = python.run(open_store, cwd=vn, **sender)
    assert "VN-GDC/fp-hcm-01" in opened
    assert f"signs with {generated['kid']}" in opened
    assert "VN-HK-CMAA-2013 HK-CED" in opened

    mid = json.loads(python.run(send, cwd=vn, **sender))["mid"]
    assert (vn / "sent" / f"{mid}.json").is_file()

    pulled = python.run(pull, cwd=hk, **receiver)
    assert f"{mid} VN-GDC decrypted" in pulled
    assert f"{mid} cites_wildlife Suspected ivory" in pulled
    assert (hk / "inbox" / "alerts" / "VN-GDC" / mid / "inner.jws").is_file()

    assert f"{mid} HK-CED acknowledged decrypted" in python.run(status, cwd=vn, **sender)

    told = python.run(errors, cwd=vn, **sender).splitlines()
    assert any(line.startswith("invalid /subjects/0/container_numbers/0 ") for line in told), told
    assert "out of scope: scope.recipient_not_party" in " ".join(told)
    assert any(line.startswith("no key: no signing key of VN-GDC/fp-hn-01") for line in told)
    assert any(line.startswith("refused: 404 ") for line in told), told
    assert any(line.startswith("keystore: BROKER_KEY_PASSPHRASE") for line in told), told
    # None of the refused attempts was sent.
    assert sorted(p.stem for p in (vn / "sent").iterdir()) == [mid]
