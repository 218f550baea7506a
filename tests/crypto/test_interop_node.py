"""Interop with npm `jose`: it opens what we build, and we open what it builds.

The Node side is tests/interop/node/envelope.mjs, the example the partner guide points to.
Without node or `npm ci` in tests/interop/node these tests skip, except under CI=true.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.crypto.envelope_world import (
    AGENCIES_26,
    BODY,
    SENDER,
    build,
    encrypt,
    inner_of,
    open_as,
    party,
    private_jwk,
    routing,
    seal,
)

NODE_DIR = Path(__file__).resolve().parents[1] / "interop" / "node"
SCRIPT = NODE_DIR / "envelope.mjs"
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "partner-open-with-any-jose-library.md"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, once `npm ci` has installed jose; else skip (fail under CI=true)."""
    binary, npm = shutil.which("node"), shutil.which("npm")
    if binary is not None and npm is not None and not (NODE_DIR / "node_modules" / "jose").is_dir():
        # Install the pinned `jose` from package-lock.json, so one test command covers interop.
        subprocess.run(
            [npm, "ci", "--silent", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=False,
            timeout=300,
        )
    if binary is None:
        reason = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "jose").is_dir():
        reason = f"npm `jose` is not installed: run `npm ci` in {NODE_DIR}"
    else:
        return binary
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run(node: str, job: dict[str, Any]) -> Any:
    done = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        cwd=NODE_DIR,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"node refused: {done.stderr.strip()}")
    return json.loads(done.stdout)


def node_open(node: str, token: str, agencies: list[str], sender: str = SENDER) -> list[dict]:
    identities = [{"agency": a, "jwk": private_jwk(party(a).enc[0])} for a in agencies]
    job = {"op": "open", "envelope": token, "sender_jwk": party(sender).sig_jwk(), "as": identities}
    return run(node, job)


@pytest.mark.parametrize("recipients", [["HK-CED"], AGENCIES_26], ids=["1", "26"])
def test_jose_opens_ours(node: str, recipients: list[str]) -> None:
    token = build(recipients)
    opened = node_open(node, token, recipients)
    assert [o["body"] for o in opened] == [BODY] * len(recipients)
    assert opened[0]["routing"] == routing(recipients=recipients)
    assert opened[-1]["inner_jws"] == inner_of(token, recipients[-1])


@pytest.mark.parametrize("recipients", [["HK-CED"], AGENCIES_26], ids=["1", "26"])
def test_we_open_jose(node: str, recipients: list[str]) -> None:
    r = routing(recipients=recipients)
    job = {
        "op": "build",
        "routing": r,
        "body": BODY,
        "signer_jwk": private_jwk(party(SENDER).sig),
        "recipient_jwks": {a: party(a).enc[0].public.jwk for a in recipients},
    }
    token = run(node, job)["envelope"]
    for agency in recipients:
        opened = open_as(agency, token)
        assert (opened.routing, opened.body) == (r, BODY)


def test_jose_example_refuses_forwarding(node: str) -> None:
    """The partner example is no rubber stamp: a re-wrapped inner JWS is refused."""
    hk = party("HK-CED")
    forwarded = seal(
        routing(sender="HK-CED", recipients=["NZ-POL"]),
        encrypt(inner_of(build()), ["NZ-POL"]),
        hk.sig,
    )
    with pytest.raises(AssertionError, match="inner and outer signers differ"):
        node_open(node, forwarded, ["NZ-POL"], sender="HK-CED")


def test_jose_example_refuses_tampered_routing(node: str) -> None:
    h, p, s = build().split(".")
    with pytest.raises(AssertionError, match="signature verification failed"):
        node_open(node, f"{h}.{p[:-4]}AAAA.{s}", ["HK-CED"])


def test_partner_guide_quotes_the_tested_script() -> None:
    """The guide's example is the code these tests run, not a copy that drifts."""
    block = GUIDE.read_text().split("```js\n", 1)[1].split("```", 1)[0]
    assert block.startswith("async function open(job)")
    assert block in SCRIPT.read_text()
