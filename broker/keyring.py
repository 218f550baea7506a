"""The broker's own keys: receipt signing and log checkpoints, created on first start.

They live encrypted (PKCS#8, the broker's passphrase) in `settings.broker_keys_dir`, apart
from any agency key. Partners pin their public halves at onboarding.

Rotation (`rotating`, run by `broker admin broker-keys rotate`) moves the current key of a kind
to `retired/` (still loadable, for verification), installs a new one and bumps the folder's
`generation` file, all under the folder's lock. Every process notices a rotation on its next
`load_or_create()`: it compares the generation file's stat with the one it loaded under (one
`stat` call, no lock, no file read), so API and worker processes stop signing with a retired
key without a restart.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.config import settings
from broker.crypto import keys, note

RECEIPT_OWNER = "broker-receipt"
LOG_OWNER = "broker-log"
# What `broker admin broker-keys rotate --kind` names, and the owner in the files' names.
KINDS = {"receipt": RECEIPT_OWNER, "log": LOG_OWNER}
RETIRED = "retired"
GENERATION_FILE = "generation"


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


_loaded: dict[Path, tuple[object, BrokerKeys]] = {}
LOCK_FILE = ".keyring.lock"
_held = threading.local()  # the folders this thread holds the lock of (the lock is re-entrant)


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold the keys folder's lock: API and worker processes starting together on an empty
    folder would otherwise each make a key, and sign receipts no restart could verify again."""
    held: set[Path] = _held.__dict__.setdefault("dirs", set())
    if directory in held:
        # A rotation signs its last checkpoint (`load_or_create`) while it holds the lock: a
        # second flock on another descriptor of this process would wait for itself.
        yield
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, also when the process dies
        held.add(directory)
        yield
    finally:
        held.discard(directory)
        os.close(fd)


def _generation(directory: Path) -> object:
    """What identifies the folder's key set: the generation file's inode, mtime and size."""
    try:
        st = os.stat(directory / GENERATION_FILE)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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


_last: list[tuple[object, Path, object, BrokerKeys]] = []


def load_or_create() -> BrokerKeys:
    """The broker's keys, generated into the keys folder the first time, exactly once however
    many processes start together; `KeyringError` if the folder holds two of a kind.

    After a rotation (in any process) the next call loads the new keys."""
    cfg = settings()
    # Every submit signs a receipt: while the settings are the same, one stat of the generation
    # file tells whether the keys changed, without resolving the folder or taking the lock.
    if _last:
        last_cfg, directory, generation, loaded = _last[0]
        if last_cfg is cfg and _generation(directory) == generation:
            return loaded
    directory = cfg.broker_keys_dir.resolve()
    generation = _generation(directory)
    cached = _loaded.get(directory)
    if cached is None or cached[0] != generation:
        with _exclusive(directory):
            generation = _generation(directory)  # what the files read below belong to
            cached = (
                generation,
                BrokerKeys(
                    receipt=_load_or_make(directory, RECEIPT_OWNER, cfg.key_passphrase),
                    log=_load_or_make(directory, LOG_OWNER, cfg.key_passphrase),
                    log_origin=cfg.log_origin,
                ),
            )
            _loaded[directory] = cached
    _last[:] = [(cfg, directory, cached[0], cached[1])]
    return cached[1]


def _bump_generation(directory: Path) -> None:
    # Written whole under a temporary name and renamed over: a new inode every time, so
    # readers that stat it see the change even within one mtime tick.
    path = directory / GENERATION_FILE
    try:
        count = int(path.read_text(encoding="ascii").strip() or 0)
    except (FileNotFoundError, ValueError):
        count = 0
    tmp = directory / f".tmp-generation-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{count + 1}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Rotation:
    """A rotation of one kind of key, prepared under the folder's lock (`rotating`).

    `old` is the current key (it signs the rotation statement), `new` the one that replaces
    it once `install` runs; `undo` puts the old one back if the rotation's transaction fails.
    """

    kind: str
    directory: Path
    old: keys.SigningKey
    new: keys.SigningKey
    passphrase: str
    installed: bool = False

    @property
    def owner(self) -> str:
        return KINDS[self.kind]

    def _name(self, key: keys.SigningKey) -> str:
        return keys.key_file_name(self.owner, key)

    def install(self) -> None:
        """Retire the old key file (to `retired/`), install the new key, bump the generation."""
        retired = self.directory / RETIRED
        retired.mkdir(mode=0o700, exist_ok=True)
        new = keys.save_private_key(self.new, self.directory, self.owner, self.passphrase)
        try:
            os.replace(self.directory / self._name(self.old), retired / self._name(self.old))
        except OSError:
            new.unlink()  # never leave two current keys of a kind
            raise
        self.installed = True
        _bump_generation(self.directory)

    def undo(self) -> None:
        """Put the old key back and delete the new one (the rotation was not recorded)."""
        if not self.installed:
            return
        with _exclusive(self.directory):
            retired = self.directory / RETIRED / self._name(self.old)
            if retired.exists():
                os.replace(retired, self.directory / self._name(self.old))
            (self.directory / self._name(self.new)).unlink(missing_ok=True)
            _bump_generation(self.directory)
        self.installed = False


@contextmanager
def rotating(kind: str) -> Iterator[Rotation]:
    """Hold the keys folder's lock while a rotation of `kind` ("receipt" or "log") is prepared,
    recorded and installed; a rotation in another process waits for this one to finish."""
    if kind not in KINDS:
        raise KeyringError(f"no broker key of kind {kind!r}: use one of {', '.join(KINDS)}")
    cfg = settings()
    load_or_create()  # this process's view is current before the lock (no waiting on ourselves)
    directory = cfg.broker_keys_dir.resolve()
    with _exclusive(directory):
        load_or_create()  # a rotation another process finished while we waited
        old = _load_or_make(directory, KINDS[kind], cfg.key_passphrase)
        yield Rotation(kind, directory, old, keys.SigningKey.generate(), cfg.key_passphrase)


def retired_keys(kind: str) -> list[keys.SigningKey]:
    """The retired keys of `kind`, kept in `retired/` (oldest file name first)."""
    directory = settings().broker_keys_dir.resolve() / RETIRED
    return [
        keys.load_signing_key(path, settings().key_passphrase)
        for path in sorted(directory.glob(f"{KINDS[kind]}-sig-*.p8.pem"))
    ]
