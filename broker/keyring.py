"""The broker's own keys: receipt signing and log checkpoints, created on first start.

They live encrypted (PKCS#8, the broker's passphrase) in `settings.broker_keys_dir`, apart
from any agency key. Partners pin their public halves at onboarding.
"""

from __future__ import annotations

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


_loaded: dict[Path, BrokerKeys] = {}


def _load_or_make(directory: Path, owner: str, passphrase: str) -> keys.SigningKey:
    found = sorted(directory.glob(f"{owner}-sig-*.p8.pem"))
    if found:
        return keys.load_signing_key(found[-1], passphrase)
    key = keys.SigningKey.generate()
    keys.save_private_key(key, directory, owner, passphrase)
    return key


_last: list[tuple[object, BrokerKeys]] = []


def load_or_create() -> BrokerKeys:
    """The broker's keys, generated into the keys folder the first time."""
    cfg = settings()
    # Every submit signs a receipt: skip resolving the folder while the settings are the same.
    if _last and _last[0][0] is cfg:
        return _last[0][1]
    directory = cfg.broker_keys_dir.resolve()
    if directory not in _loaded:
        _loaded[directory] = BrokerKeys(
            receipt=_load_or_make(directory, RECEIPT_OWNER, cfg.key_passphrase),
            log=_load_or_make(directory, LOG_OWNER, cfg.key_passphrase),
            log_origin=cfg.log_origin,
        )
    _last[:] = [(cfg, _loaded[directory])]
    return _loaded[directory]
