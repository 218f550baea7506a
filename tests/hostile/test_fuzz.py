"""Bounded fuzzing runs for CI: the atheris targets in fuzz/, plus a Hypothesis twin.

Each atheris target runs in its own process for at most HOSTILE_FUZZ_RUNS inputs (default
20,000) or HOSTILE_FUZZ_SECONDS (default 10 s), seeded from the 5.2 corpus shapes. libFuzzer
exits non-zero and writes the input when anything but the documented exceptions escapes, or
on a timeout (-timeout) or an RSS bomb (-rss_limit_mb). docs/security-testing.md has the long
form. The Hypothesis tests drive the same entry points with structured inputs in-process; they
are also what runs where atheris has no wheel.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import schemas
from broker.crypto import envelope as env
from broker.crypto import strictjson
from broker.crypto.errors import CryptoError
from broker.crypto.keys import EncryptionKey, SigningKey, b64u_decode, b64u_encode
from broker.errors import PROBLEMS
from broker.messages.schemas import EXAMPLE_ROUTING

pytestmark = pytest.mark.hostile

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("HOSTILE_FUZZ_RUNS", "20000"))
SECONDS = int(os.environ.get("HOSTILE_FUZZ_SECONDS", "10"))


@pytest.mark.parametrize("target", ["fuzz_envelope", "fuzz_routing"])
def test_atheris_target(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        str(ROOT / "fuzz" / f"{target}.py"),
        f"-atheris_runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-rss_limit_mb=1024",
        # libFuzzer checks the per-input timeout on a SIGALRM every timeout/2+1 s; a tick that
        # lands while the process exits kills it (exit -14 in CI). A timeout of three times the
        # run puts the first tick past the run's end; a hung input is still caught.
        f"-timeout={3 * SECONDS}",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120, check=False
    )
    log = done.stdout + done.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert not crashes, f"{target}: {crashes}\n{log[-4000:]}"
    assert done.returncode == 0, f"{target}: exit {done.returncode}\n{log[-4000:]}"
    runs = re.search(r"Done (\d+) (?:runs )?in (\d+) second", log)
    assert runs, log[-2000:]
    print(f"\n{target}: {runs.group(1)} inputs in {runs.group(2)} s, no finding")
    assert int(runs.group(1)) >= min(RUNS, 1000)


# --- the Hypothesis twin ---------------------------------------------------------------------

SIGNER = SigningKey.from_seed(bytes(range(32)))
KEYS = {"HK-CED": EncryptionKey.from_seed(bytes(range(32, 64)))}
ROUTING: dict[str, Any] = EXAMPLE_ROUTING  # the routing of the API examples
VALID = env.build_envelope(ROUTING, {"title": "t"}, SIGNER, {"HK-CED": KEYS["HK-CED"].public})
PAYLOAD = strictjson.loads(b64u_decode(VALID.split(".")[1]))
HEADER = b64u_encode(strictjson.dumps({"alg": "Ed25519", "kid": SIGNER.kid, "typ": env.TYP_OUTER}))
PLACES: list[tuple[Any, ...]] = [
    ("routing",),
    ("jwe",),
    ("jwe", "protected"),
    ("jwe", "iv"),
    ("jwe", "ciphertext"),
    ("jwe", "tag"),
    ("jwe", "recipients"),
    ("jwe", "recipients", 0),
    ("jwe", "recipients", 0, "header"),
    ("jwe", "recipients", 0, "encrypted_key"),
    ("jwe", "recipients", 0, "header", "alg"),
    ("jwe", "recipients", 0, "header", "kid"),
    ("jwe", "recipients", 0, "header", "epk"),
    ("jwe", "recipients", 0, "header", "epk", "x"),
] + [("routing", name) for name in ROUTING]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60)
    | st.binary(max_size=48).map(b64u_encode),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _signed(payload: Any) -> str:
    body = b64u_encode(strictjson.dumps(payload))
    signing_input = f"{HEADER}.{body}"
    return f"{signing_input}.{b64u_encode(SIGNER.sign(signing_input.encode('ascii')))}"


def _refusal(envelope: str) -> CryptoError | None:
    """Run the broker's checks; return the refusal (only CryptoError may come out)."""
    try:
        env.parse_outer_header(envelope, 64 * 1024)
        outer = env.verify_outer(envelope, SIGNER.public, max_size=64 * 1024)
        try:
            schemas.validate_routing(outer.routing)
        except schemas.SchemaError:
            return None
        env.check_jwe_structure(outer.jwe, {"HK-CED": [KEYS["HK-CED"].kid]})
    except CryptoError as exc:
        return exc
    return None


def _broker_checks(envelope: str) -> None:
    refusal = _refusal(envelope)
    if refusal is not None:
        assert 400 <= PROBLEMS[refusal.code][0] < 500
        assert re.fullmatch(r"[a-z_]+\.[a-z_]+", refusal.code)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(place=st.sampled_from(PLACES), value=json_values)
def test_hypothesis_payload_members(place: tuple[Any, ...], value: Any) -> None:
    payload = copy.deepcopy(PAYLOAD)
    doc: Any = payload
    for step in place[:-1]:
        doc = doc[step]
    doc[place[-1]] = value
    try:
        envelope = _signed(payload)
    except CryptoError:
        return  # not serializable as I-JSON (the fuzzed value itself)
    _broker_checks(envelope)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_hypothesis_strict_json(data: bytes) -> None:
    with contextlib.suppress(CryptoError):
        strictjson.loads(data)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(text=st.text(max_size=400))
def test_hypothesis_envelope_strings(text: str) -> None:
    _broker_checks(text)
    segments = VALID.split(".")
    _broker_checks(".".join([segments[0], text, segments[2]]))
