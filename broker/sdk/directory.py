"""The broker-signed key directory (PROTOCOL.md 6.2), verified before any key in it is trusted.

`GET /v1/directory/jwks` is convenient but unsigned: whoever sits between an agency and the
broker (or a broker database edited behind its back) could swap a recipient's encryption key.
`GET /v1/directory` serves the same keys as a compact JWS by the broker's receipt key, which the
agency pinned at onboarding (its fingerprint is in the agreement annex). `verified_directory`
fetches it, checks the signature with the pinned key, its `typ`, its expiry and that its
`version` never goes back (kept in `<state_dir>/directory.json`), and returns the keys.

Every refusal is a `DirectoryRefused` with a stable `code` (`directory.*`, docs/reason-codes.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.crypto import envelope as env
from broker.crypto import keys, strictjson
from broker.crypto.errors import (
    AlgNotAllowed,
    BadSignature,
    CryptoError,
    KidMismatch,
    TypMismatch,
)
from broker.sdk.client import BrokerClient

PATH = "/v1/directory"
STATE_FILE = "directory.json"
# Far above any directory of a few thousand keys; refuses a response that would exhaust memory.
MAX_DIRECTORY_BYTES = 8 << 20
_MEMBERS = ("v", "version", "issued_at", "expires_at", "keys", "previous_sha256")


class DirectoryRefused(Exception):
    """The signed directory cannot be trusted; `code` says why and never changes meaning."""

    code = "directory.malformed"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.code}: {detail}")
        self.detail = detail


class DirectoryMalformed(DirectoryRefused):
    """Not a compact JWS with the directory's payload (members, types, sizes)."""

    code = "directory.malformed"


class DirectoryUnsigned(DirectoryRefused):
    """An unsecured JWS (`alg: none`) or one without a signature."""

    code = "directory.unsigned"


class DirectoryBadSignature(DirectoryRefused):
    """Not signed by the pinned broker key: another key, or the bytes were changed."""

    code = "directory.bad_signature"


class DirectoryWrongType(DirectoryRefused):
    """A JWS of another kind (a receipt, an envelope) offered as the directory."""

    code = "directory.wrong_type"


class DirectoryStale(DirectoryRefused):
    """The directory is past its `expires_at`: an old copy replayed, or a broker not re-issuing."""

    code = "directory.stale"


class DirectoryRollback(DirectoryRefused):
    """An older version than one already seen: a replay that could restore a revoked key."""

    code = "directory.rollback"


class DirectoryFork(DirectoryRefused):
    """Two different directories with the same version, or a successor that does not name the
    version seen before it: the broker showed different parties different directories."""

    code = "directory.fork"


class DirectoryStateError(DirectoryRefused):
    """The kept state (`directory.json`) is unreadable: refused rather than trusting anything."""

    code = "directory.bad_state"


@dataclass(frozen=True, slots=True)
class Seen:
    """The highest directory version seen, and its JWS's SHA-256 (base64url)."""

    version: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Directory:
    """A verified directory: its payload, and the JWS and hash that prove what was shown."""

    version: int
    issued_at: int
    expires_at: int
    keys: list[dict[str, Any]]
    previous_sha256: str | None
    sha256: str
    jws: str

    def of(self, agency: str) -> list[dict[str, Any]]:
        """The keys of one agency (what `GET /v1/directory/jwks?agency=` answers)."""
        return [k for k in self.keys if k.get("agency") == agency]


def _integer(payload: Mapping[str, Any], name: str) -> int:
    value = payload[name]
    if type(value) is not int or value < 0:
        raise DirectoryMalformed(f"{name} must be a non-negative integer")
    return value


def _header(token: str) -> dict[str, Any]:
    """The protected header, decoded without trusting it (to tell `alg: none` apart)."""
    try:
        header = strictjson.loads(keys.b64u_decode(token.split(".", 1)[0]), max_bytes=1024)
    except CryptoError as exc:
        raise DirectoryMalformed(f"unreadable protected header: {exc.detail}") from None
    if not isinstance(header, dict):
        raise DirectoryMalformed("the protected header is not a JSON object")
    return header


def _payload(token: str, pinned: keys.PublicJWK) -> dict[str, Any]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise DirectoryMalformed("not a compact JWS")
    alg = _header(token).get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or not token.rsplit(".", 1)[1]:
        raise DirectoryUnsigned(f"an unsigned JWS (alg {alg!r}) is never a directory")
    try:
        return env.verify_compact(token, pinned, env.TYP_DIRECTORY, max_size=MAX_DIRECTORY_BYTES)
    except TypMismatch as exc:
        raise DirectoryWrongType(exc.detail) from None
    except (AlgNotAllowed, KidMismatch, BadSignature) as exc:
        raise DirectoryBadSignature(f"not signed by the pinned broker key: {exc.detail}") from None
    except CryptoError as exc:
        raise DirectoryMalformed(exc.detail) from None


def verify_directory(
    token: str,
    broker_key: Mapping[str, Any] | keys.PublicJWK,
    *,
    now: float | None = None,
    seen: Seen | None = None,
) -> Directory:
    """Verify a directory JWS with the pinned broker key; refuse an expired one and, given what
    was `seen` before, an older version or a different directory under a known version."""
    # Outside the refusals: a bad pin is the caller's configuration, not the broker's answer.
    pinned = (
        broker_key
        if isinstance(broker_key, keys.PublicJWK)
        else keys.parse_public_jwk(broker_key, use="sig")
    )
    payload = _payload(token, pinned)
    if missing := [m for m in _MEMBERS if m not in payload]:
        raise DirectoryMalformed(f"the payload lacks {missing}")
    if payload["v"] != 1:
        raise DirectoryMalformed(f"unknown directory format v={payload['v']!r}")
    version = _integer(payload, "version")
    issued_at, expires_at = _integer(payload, "issued_at"), _integer(payload, "expires_at")
    listed, previous = payload["keys"], payload["previous_sha256"]
    if version < 1 or expires_at <= issued_at:
        raise DirectoryMalformed("version must be positive and expires_at after issued_at")
    if not isinstance(listed, list) or not all(
        isinstance(k, dict) and isinstance(k.get("kid"), str) for k in listed
    ):
        raise DirectoryMalformed("keys must be a list of JWKs with a kid")
    if previous is not None and not isinstance(previous, str):
        raise DirectoryMalformed("previous_sha256 must be a string or null")
    now = time.time() if now is None else now
    if expires_at <= now:
        raise DirectoryStale(f"version {version} expired at {expires_at} (now {int(now)})")
    sha256 = keys.sha256_b64u(token.encode("ascii"))
    if seen is not None:
        if version < seen.version:
            raise DirectoryRollback(f"version {version} is older than version {seen.version} seen")
        if version == seen.version and sha256 != seen.sha256:
            raise DirectoryFork(f"a second, different directory numbered {version}")
        if version == seen.version + 1 and previous != seen.sha256:
            raise DirectoryFork(
                f"version {version} does not follow the version {seen.version} seen"
            )
    return Directory(version, issued_at, expires_at, listed, previous, sha256, token)


def load_seen(state_dir: Path) -> Seen | None:
    """The highest version kept in `<state_dir>/directory.json`, or None before the first."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Seen(int(data["version"]), str(data["sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DirectoryStateError(
            f"{path} is unreadable ({exc}); restore it from a backup rather than delete it"
        ) from None


def save_seen(state_dir: Path, directory: Directory) -> None:
    """Keep `directory` as the highest version seen (written atomically: a crash keeps the old)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"version": directory.version, "sha256": directory.sha256}) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)


def fetch_directory(client: BrokerClient) -> str:
    """The compact JWS that `GET /v1/directory` serves (not yet verified)."""
    body = client.get(PATH)
    token = body.get("directory") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise DirectoryMalformed(f"{PATH} did not answer {{'directory': '<compact JWS>'}}")
    return token


def verified_directory(
    client: BrokerClient,
    broker_key: Mapping[str, Any] | keys.PublicJWK,
    *,
    state_dir: Path | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The directory's keys (with their metadata members), after verifying its signature with
    the pinned `broker_key` (a public JWK), its `typ` and expiry, and, with `state_dir`, that its
    version is not older than the highest seen there (which it then records)."""
    seen = load_seen(state_dir) if state_dir is not None else None
    directory = verify_directory(fetch_directory(client), broker_key, now=now, seen=seen)
    if state_dir is not None and (seen is None or directory.version > seen.version):
        save_seen(state_dir, directory)
    return directory.keys
