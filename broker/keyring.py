"""The broker's own keys: receipt signing and log checkpoints, created on first start.

They live encrypted (PKCS#8, the broker's passphrase) in `settings.broker_keys_dir`, apart
from any agency key. Partners pin their public halves at onboarding.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.config import settings
from broker.crypto import keys, note

RECEIPT_OWNER = "broker-receipt"
LOG_OWNER = "broker-log"


@dataclass(frozen=True)
class BrokerKeys:
    receipt: keys.SigningKey
    log: keys.SigningKey
    log_origin: str

    @property
    def log_verifier_key(self) -> str:
        """`<origin>+<keyid>+<base64>`: what auditors and agencies pin."""
        return note.format_verifier_key(self.log_origin, self.log.private_key.public_key())


class KeyringError(RuntimeError):
    """The broker's keys folder holds something it must not start with; the message says what."""


_loaded: dict[Path, BrokerKeys] = {}
LOCK_FILE = ".keyring.lock"


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold the keys folder's lock: API and worker processes starting together on an empty
    folder would otherwise each make a key, and sign receipts no restart could verify again."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, also when the process dies
        yield
    finally:
        os.close(fd)


def _load_or_make(directory: Path, owner: str, passphrase: str) -> keys.SigningKey:
    found = sorted(directory.glob(f"{owner}-sig-*.p8.pem"))
    if len(found) > 1:
        # Which one signs is not ours to guess: each process could pick another.
        names = ", ".join(p.name for p in found)
        raise KeyringError(
            f"{directory} holds {len(found)} current {owner} keys ({names}): keep the one "
            "partners pinned and move the others out of the folder"
        )
    if found:
        return keys.load_signing_key(found[0], passphrase)
    key = keys.SigningKey.generate()
    keys.save_private_key(key, directory, owner, passphrase)
    return key


_last: list[tuple[object, BrokerKeys]] = []


def load_or_create() -> BrokerKeys:
    """The broker's keys, generated into the keys folder the first time, exactly once however
    many processes start together; `KeyringError` if the folder holds two of a kind."""
    cfg = settings()
    # Every submit signs a receipt: skip resolving the folder while the settings are the same.
    if _last and _last[0][0] is cfg:
        return _last[0][1]
    directory = cfg.broker_keys_dir.resolve()
    if directory not in _loaded:
        with _exclusive(directory):
            _loaded[directory] = BrokerKeys(
                receipt=_load_or_make(directory, RECEIPT_OWNER, cfg.key_passphrase),
                log=_load_or_make(directory, LOG_OWNER, cfg.key_passphrase),
                log_origin=cfg.log_origin,
            )
    _last[:] = [(cfg, _loaded[directory])]
    return _loaded[directory]
