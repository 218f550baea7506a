"""The agency-side keystore: encrypted PKCS#8 files, mode 0600, in a 0700 folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from broker.crypto import keys
from broker.crypto.errors import WeakPassphrase

PASSPHRASE_ENV = "BROKER_KEY_PASSPHRASE"  # noqa: S105 - the name of the variable


@dataclass(frozen=True)
class Keystore:
    """Private keys of focal points (sig) and agencies (enc) on the agency's own machine."""

    folder: Path
    passphrase: str

    @classmethod
    def open(cls, folder: Path, passphrase: str | None = None) -> Keystore:
        """Passphrase from the argument or $BROKER_KEY_PASSPHRASE (never from a file)."""
        secret = passphrase or os.environ.get(PASSPHRASE_ENV)
        if not secret:
            raise WeakPassphrase(
                f"set {PASSPHRASE_ENV} (at least 128 bits, e.g. 26 base32 characters)"
            )
        keys.check_passphrase(secret)
        return cls(folder, secret)

    def generate(self, owner: str, use: str) -> tuple[Path, keys.PrivateKey]:
        """A new Ed25519 (sig) or X25519 (enc) key for `owner`, written encrypted."""
        key: keys.PrivateKey = (
            keys.SigningKey.generate() if use == "sig" else keys.EncryptionKey.generate()
        )
        return keys.save_private_key(key, self.folder, owner, self.passphrase), key

    def _files(self, owner: str, use: str) -> list[Path]:
        stem = owner.replace("/", "__")
        return sorted(self.folder.glob(f"{stem}-{use}-*.p8.pem"), key=lambda p: p.stat().st_mtime)

    def signing_key(self, owner: str) -> keys.SigningKey:
        """The newest signing key of `owner`."""
        files = self._files(owner, "sig")
        if not files:
            raise FileNotFoundError(f"no signing key for {owner} in {self.folder}")
        return keys.load_signing_key(files[-1], self.passphrase)

    def encryption_keys(self, agency: str) -> list[keys.EncryptionKey]:
        """All encryption keys of `agency`, newest last: retired keys still decrypt."""
        return [keys.load_encryption_key(p, self.passphrase) for p in self._files(agency, "enc")]
