"""Rotating the broker's own keys (receipt, log) and publishing the chain of rotations.

`rotate` runs in one transaction holding the sequencer's lock, then the keys folder's lock (the
sequencer's order: it takes the database lock, then loads the keys):

1. every event recorded so far is sequenced and signed by the old key;
2. a `log.key_rotated` event is recorded whose details carry the old and new public keys and a
   rotation statement, a compact JWS (`typ: broker-key-rotation+jws`) signed by the old key over
   them (docs/protocol.md, "Rotating the broker's keys");
3. that event is sequenced on its own, so its leaf is the last one of a checkpoint signed by the
   old key (the handover checkpoint, size `index + 1`): the old log key signs sizes up to it,
   the new one every later size;
4. the key files are swapped (`keyring.Rotation.install`): other processes' sequencers, waiting
   on the lock, load the new key when they get it.

If the transaction then fails to commit, the files are swapped back (`Rotation.undo`).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from broker import keyring
from broker.audit import repository, sequencer, verify
from broker.audit import service as audit
from broker.audit.models import AuditEvent, LogLeaf
from broker.crypto import envelope as env
from broker.crypto import note
from broker.errors import InternalError
from broker.ids import utcnow
from broker.logging import get_logger

KIND = "log.key_rotated"
# PROTOCOL.md 5.3's example key, before and after an (illustrative) rotation at leaf 7.
EXAMPLE_LOG_KEY = (
    "broker.example.int/exchange-log/v1+ae2ac04d+AWPdzy2PtxwkaxrLIXuN67R64hEK2DCTL9gEnTuW1jc/"
)
EXAMPLE_LOG_KEYS: dict[str, Any] = {
    "origin": "broker.example.int/exchange-log/v1",
    "current": EXAMPLE_LOG_KEY,
    "keys": [
        {
            "vkey": "broker.example.int/exchange-log/v1+5c1d9a07+AQ2sU0GQnqnpH3zU9xyjFJYtoJ2l0s1LVmLq0Y8kc3jx",
            "status": "retired",
            "valid_from": None,
            "valid_until": 1767225603123,
            "first_size": 0,
            "last_size": 8,
        },
        {
            "vkey": EXAMPLE_LOG_KEY,
            "status": "current",
            "valid_from": 1767225603123,
            "valid_until": None,
            "first_size": 9,
            "last_size": None,
        },
    ],
    "rotations": [
        {
            "key": "log",
            "index": 7,
            "ts": 1767225603123,
            "leaf": "<base64 of leaf 7's bytes>",
            "statement": "<compact JWS, typ broker-key-rotation+jws, signed by the retired key>",
        }
    ],
}
_log = get_logger("broker.audit.keyrotation")


def statement_payload(
    kind: str, rotation: keyring.Rotation, origin: str, at_ms: int
) -> dict[str, Any]:
    """What the old key signs: both public keys (and, for the log key, both verifier keys)."""
    payload: dict[str, Any] = {
        "v": 1,
        "key": kind,
        "origin": origin,
        "old_kid": rotation.old.kid,
        "new_kid": rotation.new.kid,
        "old_jwk": rotation.old.public.jwk,
        "new_jwk": rotation.new.public.jwk,
        "rotated_at": at_ms,
    }
    if kind == "log":
        payload["old_vkey"] = note.format_verifier_key(
            origin, rotation.old.private_key.public_key()
        )
        payload["new_vkey"] = note.format_verifier_key(
            origin, rotation.new.private_key.public_key()
        )
    return payload


async def rotate(session: AsyncSession, kind: str, *, actor: str) -> dict[str, Any]:
    """Rotate the broker's `kind` key ("receipt" or "log") and record it on the log.

    Returns the rotation as `/v1/log/key` publishes it. Raises `keyring.KeyringError` for a
    kind that does not exist or a keys folder that holds two current keys of the kind.
    """
    if kind not in keyring.KINDS:
        raise keyring.KeyringError(
            f"no broker key of kind {kind!r}: use one of {', '.join(keyring.KINDS)}"
        )
    await repository.lock_sequencer(session)
    while await sequencer.sequence(session):  # the old key signs everything recorded before
        pass
    origin = keyring.load_or_create().log_origin
    with keyring.rotating(kind) as rotation:
        now = utcnow()
        payload = statement_payload(kind, rotation, origin, sequencer.epoch_ms(now))
        statement = env.sign_compact(payload, rotation.old, verify.ROTATION_TYP)
        details = {k: v for k, v in payload.items() if k != "v"} | {"statement": statement}
        recorded = await audit.record(
            session, KIND, actor=actor, subject=f"broker:{kind}-key", details=details
        )
        index = await _sequence_until(session, recorded.id)
        _undo_on_rollback(session, rotation)  # a no-op until installed
        rotation.install()
    _log.info("broker key rotated", kind=kind, old=rotation.old.kid, new=rotation.new.kid)
    return {
        "key": kind,
        "index": index,
        "old_kid": rotation.old.kid,
        "new_kid": rotation.new.kid,
        **(
            {"old_vkey": payload["old_vkey"], "new_vkey": payload["new_vkey"]}
            if kind == "log"
            else {}
        ),
        "statement": statement,
    }


async def _sequence_until(session: AsyncSession, event_id: uuid.UUID) -> int:
    # One event a batch: events other transactions committed meanwhile go first, and the
    # rotation's leaf ends the last checkpoint the old key signs.
    while True:
        index = await session.scalar(select(AuditEvent.leaf_index).where(AuditEvent.id == event_id))
        if index is not None:
            return int(index)
        if not await sequencer.sequence(session, max_batch=1):
            raise InternalError("the rotation's event could not be sequenced")


def _undo_on_rollback(session: AsyncSession, rotation: keyring.Rotation) -> None:
    committed: list[bool] = []

    def on_commit(_: Session) -> None:
        committed.append(True)

    def on_rollback(_: Session) -> None:
        if not committed:
            try:
                rotation.undo()
            except OSError as exc:  # say what to fix by hand rather than hide the first error
                _log.error("broker key rotation not undone", kind=rotation.kind, error=str(exc))

    sa_event.listen(session.sync_session, "after_commit", on_commit, once=True)
    sa_event.listen(session.sync_session, "after_rollback", on_rollback, once=True)


async def history(session: AsyncSession) -> list[dict[str, Any]]:
    """Every sequenced rotation, oldest first: kind, leaf index and bytes, time, statement."""
    rows = await session.execute(
        select(AuditEvent.details, LogLeaf.index, LogLeaf.leaf_bytes, LogLeaf.ts)
        .join(LogLeaf, LogLeaf.event_id == AuditEvent.id)
        .where(AuditEvent.kind == KIND)
        .order_by(LogLeaf.index)
    )
    return [
        {
            "key": details.get("key"),
            "index": int(index),
            "ts": sequencer.epoch_ms(ts),
            "leaf": base64.b64encode(data).decode(),
            "statement": details.get("statement"),
            "details": details,
        }
        for details, index, data, ts in rows
    ]


def _validity(rotations: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Each key of `kind` with the times (and, for the log key, tree sizes) it signed."""
    mine = [r for r in rotations if r["key"] == kind]
    spans: list[dict[str, Any]] = []
    since: int | None = None
    first = 0
    for r in mine:
        d = r["details"]
        span = {
            "kid": d.get("old_kid"),
            "jwk": d.get("old_jwk"),
            "status": "retired",
            "valid_from": since,
            "valid_until": r["ts"],
        }
        if kind == "log":
            span |= {"vkey": d.get("old_vkey"), "first_size": first, "last_size": r["index"] + 1}
            first = r["index"] + 2
        spans.append(span)
        since = r["ts"]
    keys = keyring.load_or_create()
    current = keys.log if kind == "log" else keys.receipt
    now = {
        "kid": current.kid,
        "jwk": current.public.jwk,
        "status": "current",
        "valid_from": since,
        "valid_until": None,
    }
    if kind == "log":
        now |= {"vkey": keys.log_verifier_key, "first_size": first, "last_size": None}
    return [*spans, now]


async def published(session: AsyncSession) -> dict[str, Any]:
    """The broker's keys, current and retired, with their validity and the rotations between
    them: what `GET /v1/directory/broker` adds to the current keys."""
    rotations = await history(session)
    out = [{k: v for k, v in r.items() if k != "details"} for r in rotations]
    return {
        "receipt_keys": [
            {
                **s["jwk"],
                "status": s["status"],
                "valid_from": s["valid_from"],
                "valid_until": s["valid_until"],
            }
            for s in _validity(rotations, "receipt")
        ],
        "log_keys": [
            {
                k: s[k]
                for k in ("vkey", "status", "valid_from", "valid_until", "first_size", "last_size")
            }
            for s in _validity(rotations, "log")
        ],
        "rotations": out,
    }


async def log_keys(session: AsyncSession) -> dict[str, Any]:
    """`GET /v1/log/key` as JSON: the current verifier key, every earlier one with the tree
    sizes it signed, and the log-key rotations with their leaves and statements."""
    doc = await published(session)
    keys = keyring.load_or_create()
    return {
        "origin": keys.log_origin,
        "current": keys.log_verifier_key,
        "keys": doc["log_keys"],
        "rotations": [r for r in doc["rotations"] if r["key"] == "log"],
    }
