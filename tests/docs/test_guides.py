"""Every shell block in the guides runs, in order, against a live broker (doc examples do not rot)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.config import settings
from broker.crypto.keys import SigningKey, generate_passphrase

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def blocks(guide: str) -> list[str]:
    """The ```sh blocks of a guide, in order (```console blocks are shown, not run)."""
    return re.findall(r"```sh\n(.*?)```", (DOCS / guide).read_text(), flags=re.S)


def test_every_guide_block_is_collected() -> None:
    guides = (
        "focal-points.md",
        "partners.md",
        "operators.md",
        "auditors.md",
        "auditors-console.md",
    )
    counts = {g: len(blocks(g)) for g in guides}
    assert counts == {
        "focal-points.md": 6,
        "partners.md": 2,
        "operators.md": 3,
        "auditors.md": 2,
        "auditors-console.md": 2,
    }


class Shell:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env

    def run(self, script: str, **env: str) -> str:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
        return result.stdout


def _log_key() -> str:
    from broker import keyring

    return keyring.load_or_create().log_verifier_key


@pytest.fixture
def shell(live_url: str, world: dict[str, Any], tmp_path: Path) -> Shell:
    (tmp_path / "broker").symlink_to(ROOT / "broker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        BROKER_URL=live_url,
        BROKER_KEYSTORE=str(tmp_path / "keys"),
        BROKER_KEY_PASSPHRASE=generate_passphrase(),
        BROKER_DATABASE_URL=settings().sqlalchemy_url,
        # The guides' admin commands issue tokens the live broker must know: same pepper.
        BROKER_TOKEN_PEPPER=settings().token_pepper,
        BROKER_DATA_DIR=str(tmp_path / "data"),
        BROKER_LOG_LEVEL="WARNING",
        # The log key the agencies pin (from the agreement annex; `broker demo env` exports it).
        BROKER_LOG_KEY=_log_key(),
    )
    return Shell(tmp_path, env)


def test_guides_run_against_a_live_broker(shell: Shell, token_for: Any, tmp_path: Path) -> None:
    registrar = token_for("admin")  # for the cross-agency set-up below
    vn_registrar = token_for("registrar", agency_id="VN-GDC")
    hk_registrar = token_for("registrar", agency_id="HK-CED")
    focal = token_for("focal_point", focal_point_id="VN-GDC/fp-hcm-01")
    hk_fp = token_for("focal_point", focal_point_id="HK-CED/fp-01")
    hk = token_for("agency", agency_id="HK-CED")
    fp_guide, partner_guide = blocks("focal-points.md"), blocks("partners.md")
    # The partner agency's keys exist before anyone encrypts to it.
    # Each guide's keys, registered by its own agency's registrar.
    shell.run(partner_guide[0], REGISTRAR_TOKEN=hk_registrar)
    shell.run(fp_guide[0], REGISTRAR_TOKEN=vn_registrar)
    agreements = json.loads(shell.run(fp_guide[1], BROKER_TOKEN=focal))
    assert "VN-HK-CMAA-2013" in {a["id"] for a in agreements}
    dry = json.loads(shell.run(fp_guide[2], BROKER_TOKEN=focal))
    assert dry["decision"] == "accept"
    mid = json.loads(shell.run(fp_guide[3], BROKER_TOKEN=focal))["mid"]
    status = json.loads(shell.run(fp_guide[4], BROKER_TOKEN=focal, MID=mid))
    assert status["mid"] == mid
    # Feedback goes from HK-CED's focal point back to VN-GDC: their keys, as the registrar would.
    shell.run(
        'broker keys generate HK-CED/fp-01 --use sig --register --token "$REGISTRAR_TOKEN"\n'
        'broker keys generate VN-GDC --use enc --register --token "$REGISTRAR_TOKEN"',
        REGISTRAR_TOKEN=registrar,
    )
    feedback = json.loads(shell.run(fp_guide[5], BROKER_TOKEN=hk_fp, MID=mid))
    assert feedback["mid"] != mid
    pulled = shell.run(partner_guide[1], BROKER_TOKEN=hk)
    assert mid in pulled
    assert '"decrypted"' in pulled
    # The registrar's commands, on the broker host against its database.
    # A kid that begins with '-' (one in 64 does) must not be read as an option: the guide
    # gives it after `--`.
    key = next(k for k in iter(SigningKey.generate, None) if k.kid.startswith("-"))
    jwk_file = tmp_path / "jwk.json"
    jwk_file.write_text(json.dumps(key.public.jwk))
    out = shell.run(blocks("operators.md")[0], JWK_FILE=str(jwk_file), KID=key.kid)
    assert key.kid in out
    assert "hk-ced-system" in out
    # The invariant check, once the exchange above has settled.
    # (On the broker host it reads the broker's own log key; this shell's data folder is not
    # the test server's, so the key is given as an auditor would pin it.)
    from broker import keyring

    ops = blocks("operators.md")
    checked = shell.run(
        next(b for b in ops if "broker check" in b),
        BROKER_LOG_KEY=keyring.load_or_create().log_verifier_key,
    )
    assert "settled: True" in checked
    # The operator gives an agency its registrar.
    registrar_block = next(b for b in ops if "--role registrar" in b)
    assert '"role": "registrar"' in shell.run(registrar_block)
    assert "VIOLATION" not in checked


def json_objects(text: str) -> list[Any]:
    """The JSON documents printed one after another (the CLI pretty-prints each)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        obj, at = decoder.raw_decode(text, at)
        found.append(obj)
    return found


def test_auditor_guides_run_against_a_live_broker(shell: Shell, tmp_path: Path) -> None:
    from broker import keyring
    from tests.audit.conftest import sequence_all

    console_guide, audit_guide = blocks("auditors-console.md"), blocks("auditors.md")
    # The administrator issues the auditors' tokens on the broker host.
    issued = {t["principal"]: t for t in json_objects(shell.run(console_guide[0]))}
    assert issued["internal-audit"]["role"] == "auditor"
    assert issued["hk-dpo"]["role"] == "auditor"
    sequence_all()  # what the sequencer does within a second
    auditor = {
        "HOME": str(tmp_path / "home"),
        "BROKER_TOKEN": issued["internal-audit"]["token"],
        "BROKER_LOG_KEY": keyring.load_or_create().log_verifier_key,
    }
    (tmp_path / "home").mkdir()
    shell.run(audit_guide[0], **auditor)
    assert (tmp_path / "home" / ".broker" / "checkpoint.json").is_file()
    shell.run(audit_guide[1], **auditor)
    assert json.loads((tmp_path / "export.json").read_text())["events"]
    shell.run(console_guide[1], **auditor)
    assert (tmp_path / "auditor-checkpoint.json").is_file()


def test_every_setting_is_in_the_operators_guide() -> None:
    from broker.config import Settings

    guide = (DOCS / "operators.md").read_text()
    missing = [
        f"BROKER_{f.upper()}" for f in Settings.model_fields if f"BROKER_{f.upper()}`" not in guide
    ]
    assert missing == []
