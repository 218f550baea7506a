"""The agency-side keystore: encrypted PKCS#8 files, mode 0600, in a 0700 folder.

A key file alone is not a key the broker accepts: only one its directory shows active and valid
for the signer is. A keystore bound to the directory (`with_directory(client)`) signs only with
such a key, so a key whose registration failed, or that was retired or revoked, is never used;
`kid=` picks one of several. Unbound (offline), it signs only with an owner's single key, or the
one named by `kid=`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from broker.crypto import keys
from broker.crypto.errors import KeyUnreadable, WeakPassphrase

PASSPHRASE_ENV = "BROKER_KEY_PASSPHRASE"  # noqa: S105 - the name of the variable
_FILE = re.compile(r"(?P<stem>.+)-(?P<use>sig|enc)-(?P<kid>[A-Za-z0-9_-]{43})\.p8\.pem")


class KeystoreError(Exception):
    """A keystore problem, told in one line with its fix."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not decrypt the keystore's keys (or is not one at all)."""


class NoSigningKey(KeystoreError):
    """No key of the owner that the broker would accept for signing (or none named `kid`)."""


class Directory(Protocol):
    """What the keystore reads from the broker's key directory (`BrokerClient` has it)."""

    def jwks(self, agency: str | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class StoredKey:
    """A key file, described by its name (no passphrase needed)."""

    owner: str
    use: str
    kid: str
    path: Path

    @property
    def agency(self) -> str:
        return self.owner.split("/")[0]


def refusal(key: StoredKey, published: Mapping[str, Any] | None, now: int) -> str | None:
    """Why the broker would refuse `key` for its owner at `now` (its directory entry being
    `published`), or None when the directory shows it active and valid for that owner."""
    if published is None:
        return "not registered"
    if published.get("use") != key.use or published.get("agency") != key.agency:
        return f"registered as a {published.get('use')} key of {published.get('agency')}"
    bound = published.get("focal_point")
    if "/" in key.owner and bound not in (None, key.owner):
        return f"registered to {bound}"
    if published.get("status") != "active":
        return str(published.get("status"))
    nbf, exp = int(published.get("nbf", 0)), int(published.get("exp", 0))
    if not nbf <= now < exp:
        return f"not valid now (from {_date(nbf)} until {_date(exp)})"
    return None


def choose(
    stored: list[StoredKey], published: Mapping[str, Mapping[str, Any]], now: int
) -> StoredKey | None:
    """Of one owner's signing keys (oldest file first), the one to sign with: of those the
    directory (`published`, by kid) shows active and valid for the owner at `now`, the most
    recently valid, and of equals the newest file."""
    usable = [
        (int(published[k.kid].get("nbf", 0)), i, k)
        for i, k in enumerate(stored)
        if refusal(k, published.get(k.kid), now) is None
    ]
    return max(usable, key=lambda item: item[:2])[2] if usable else None


def _date(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


@dataclass(frozen=True)
class Keystore:
    """Private keys of focal points (sig) and agencies (enc) on the agency's own machine."""

    folder: Path
    passphrase: str
    directory: Directory | None = None

    @classmethod
    def open(cls, folder: Path, passphrase: str | None = None) -> Keystore:
        """Passphrase from the argument or $BROKER_KEY_PASSPHRASE (never from a file).

        A passphrase that is too weak, or that does not decrypt the keys already in the folder,
        is refused here (`WrongPassphrase`), before anything is signed or generated.
        """
        secret = passphrase or os.environ.get(PASSPHRASE_ENV)
        if not secret:
            raise WrongPassphrase(
                f"the keystore needs its passphrase: set {PASSPHRASE_ENV} "
                "(at least 128 bits, e.g. 26 base32 characters)"
            )
        try:
            keys.check_passphrase(secret)
        except WeakPassphrase:
            raise WrongPassphrase(
                f"{PASSPHRASE_ENV} is not a passphrase of at least 128 bits: use your keystore's, "
                "or for a new keystore generate one, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
            ) from None
        store = cls(folder, secret)
        for first in store.stored_keys()[:1]:
            (store._load if first.use == "sig" else store._load_enc)(first)
        return store

    def with_directory(self, directory: Directory) -> Keystore:
        """This keystore, choosing signing keys by what `directory` (a `BrokerClient`) shows."""
        return replace(self, directory=directory)

    def stored_keys(self, owner: str | None = None, use: str | None = None) -> list[StoredKey]:
        """The key files (of `owner`, of `use`), oldest first."""
        if not self.folder.is_dir():
            return []
        found: list[tuple[float, StoredKey]] = []
        for path in self.folder.glob("*.p8.pem"):
            match = _FILE.fullmatch(path.name)
            if match is None:
                continue
            key = StoredKey(match["stem"].replace("__", "/"), match["use"], match["kid"], path)
            if (owner is None or key.owner == owner) and (use is None or key.use == use):
                found.append((path.stat().st_mtime, key))
        return [k for _, k in sorted(found, key=lambda item: (item[0], item[1].kid))]

    def generate(self, owner: str, use: str) -> tuple[Path, keys.PrivateKey]:
        """A new Ed25519 (sig) or X25519 (enc) key for `owner`, written encrypted."""
        key: keys.PrivateKey = (
            keys.SigningKey.generate() if use == "sig" else keys.EncryptionKey.generate()
        )
        return keys.save_private_key(key, self.folder, owner, self.passphrase), key

    def discard(self, path: Path) -> None:
        """Delete a key file that must not be used (its registration was refused)."""
        path.unlink(missing_ok=True)

    def set_aside(self, path: Path) -> Path:
        """Rename a key file out of use (its registration is unconfirmed); return the new path."""
        aside = path.with_name(path.name + ".unregistered")
        path.rename(aside)
        return aside

    def published(self, agency: str) -> dict[str, dict[str, Any]]:
        """The directory's entries for `agency`'s keys by kid (needs `with_directory`)."""
        if self.directory is None:
            raise KeystoreError("the keystore is not bound to a directory")
        return {k["kid"]: k for k in self.directory.jwks(agency) if "kid" in k}

    def signing_key(self, owner: str, kid: str | None = None) -> keys.SigningKey:
        """The key `owner` signs with: one the directory shows active and valid for `owner`
        (the most recently valid of several), or the one named `kid` if the directory allows it.

        Unbound to a directory: `owner`'s only signing key, or the one named `kid`.
        """
        stored = self.stored_keys(owner, "sig")
        if not stored:
            raise NoSigningKey(
                f"no signing key of {owner} in {self.folder}: generate one with "
                f"`broker keys generate {owner} --register`, or pass --keystore"
            )
        if kid is not None:
            stored = [k for k in stored if k.kid == kid]
            if not stored:
                raise NoSigningKey(
                    f"--kid {kid} is not a signing key of {owner} in {self.folder}: "
                    "see `broker keys list`"
                )
        if self.directory is None:
            if len(stored) > 1:
                raise NoSigningKey(
                    f"{len(stored)} signing keys of {owner} in {self.folder}: pass --kid "
                    "(see `broker keys list`)"
                )
            return self._load(stored[0])
        published = self.published(stored[0].agency)
        now = int(time.time())
        chosen = choose(stored, published, now)
        if chosen is None and kid is not None:
            raise NoSigningKey(
                f"--kid {kid} is {refusal(stored[0], published.get(kid), now)} in the broker's "
                "directory, which would refuse it: see `broker keys list`"
            )
        if chosen is None:
            reasons = ", ".join(
                f"{k.kid[:8]}… {refusal(k, published.get(k.kid), now)}" for k in stored
            )
            raise NoSigningKey(
                f"no signing key of {owner} in {self.folder} is active in the broker's directory "
                f"({reasons}): have one registered, or pass --kid; see `broker keys list`"
            )
        return self._load(chosen)

    def encryption_keys(self, agency: str) -> list[keys.EncryptionKey]:
        """All encryption keys of `agency`, newest last: retired keys still decrypt."""
        return [self._load_enc(k) for k in self.stored_keys(agency, "enc")]

    def _load(self, key: StoredKey) -> keys.SigningKey:
        with self._unlocking(key):
            return keys.load_signing_key(key.path, self.passphrase)

    def _load_enc(self, key: StoredKey) -> keys.EncryptionKey:
        with self._unlocking(key):
            return keys.load_encryption_key(key.path, self.passphrase)

    @contextmanager
    def _unlocking(self, key: StoredKey) -> Iterator[None]:
        try:
            yield
        except KeyUnreadable as exc:
            if isinstance(exc.__cause__, ValueError):  # the decryption itself failed
                raise WrongPassphrase(
                    f"{PASSPHRASE_ENV} does not decrypt {key.path}: set it to the passphrase "
                    "this keystore's keys were generated with (or pass --keystore)"
                ) from None
            raise
