"""The log sequencer: give unsequenced audit events consecutive leaves and sign a checkpoint.

One sequencer runs at a time (a transaction-scoped database lock), so indexes are assigned once
and without gaps. Each call appends one batch and signs one C2SP checkpoint for the new size in
the same transaction as the leaves and nodes, so the stored tree and its latest checkpoint
always agree. Before signing, the stored right edge must reproduce the previous checkpoint's
root and the new root must be provably consistent with it: the broker never signs two roots for
one size, nor a tree that does not extend what it signed before. When that fails the
sequencer stops with `log.inconsistent` and logs an error; it never repairs silently.

A batch costs a fixed number of statements whatever its size (docs/performance.md,
"Transparency log"): one SELECT of the events (details as JSON text, parsed once straight
into the leaf), one UPDATE giving them their indexes, one multi-row INSERT each for leaves and
nodes, and the checkpoint. The UPDATE only touches events still without an index, and the
count must match: an index, once committed, never changes. A crash anywhere before the commit
rolls the whole batch back, and the next run assigns the same indexes. Batches stay at 5,000:
under a backlog a batch must still commit well within the 1 s merge delay.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from broker import keyring
from broker.audit import leaf, repository
from broker.audit.models import Checkpoint
from broker.crypto import merkle, note
from broker.errors import BrokerError
from broker.faults import crash_point
from broker.ids import utcnow
from broker.logging import get_logger

MAX_BATCH = 5000


class LogInconsistent(BrokerError, code="log.inconsistent"): ...


_log = get_logger("broker.audit.sequencer")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    """Exact integer epoch milliseconds (floor), as leaves carry them in `ts`."""
    return (moment - _EPOCH) // _MS


async def sequence(session: AsyncSession, *, max_batch: int = MAX_BATCH) -> int:
    """Append up to `max_batch` unsequenced events to the log and sign a checkpoint; returns how many."""
    await repository.lock_sequencer(session)
    head = await repository.latest_checkpoint(session)
    size = head.size if head is not None else 0
    stored = await repository.leaf_count(session)
    if stored != size:
        _refuse(f"{stored} leaves are stored but the latest checkpoint has size {size}")
    events = await repository.unsequenced(session, max_batch)
    if not events and head is not None:
        return 0
    edge = await repository.get_nodes(session, merkle.root_keys(size))
    try:
        old_root = merkle.root(size, edge)
    except merkle.MissingNodeError as exc:
        _refuse(f"the right edge of the stored tree of size {size} is incomplete: {exc}")
    if head is not None:
        _check_head(head, old_root)
    new_size = size + len(events)
    marked = await repository.mark_sequenced(session, [e[0] for e in events], size)
    if marked != len(events):
        _refuse(f"{len(events)} events to sequence but {marked} were still unsequenced")
    rows, hashes = _leaves(events, size)
    new_nodes, new_root = merkle.append_leaves(size, hashes, edge)
    if size:
        _check_consistent(size, new_size, old_root, new_root, {**edge, **dict(new_nodes)})
    await repository.insert_leaves(session, rows)
    await repository.insert_nodes(session, new_nodes)
    await sign(session, new_size, new_root)
    crash_point("log.before_commit")
    return len(events)


async def sign(session: AsyncSession, size: int, root_hash: bytes) -> Checkpoint:
    """Sign and store the checkpoint of `size` (a second root for one size fails on the key)."""
    keys = keyring.load_or_create()
    text = note.Checkpoint(keys.log_origin, size, root_hash).format()
    row = Checkpoint(
        size=size,
        root_hash=root_hash,
        note=note.sign_note(text, keys.log_origin, keys.log.private_key),
        created_at=utcnow(),
    )
    await repository.add_checkpoint(session, row)
    return row


LeafRow = tuple[int, Any, bytes, bytes, datetime]


def _leaves(
    events: Sequence[Row[Any, Any, Any, Any, Any, Any]], start: int
) -> tuple[list[LeafRow], list[bytes]]:
    rows: list[LeafRow] = []
    hashes: list[bytes] = []
    sha256 = hashlib.sha256
    for offset, (event_id, kind, actor, subject, details, created_at) in enumerate(events):
        index = start + offset
        data = leaf.leaf_bytes_from_json(
            kind=kind,
            index=index,
            ts=epoch_ms(created_at),
            actor=actor,
            subject=subject,
            details_json=details,
        )
        digest = sha256(b"\x00" + data).digest()
        hashes.append(digest)
        rows.append((index, event_id, data, digest, created_at))
    return rows, hashes


def _check_head(head: Checkpoint, edge_root: bytes) -> None:
    text = head.note[: head.note.find("\n\n") + 1]
    try:
        signed = note.Checkpoint.parse(text)
    except note.NoteError as exc:
        _refuse(f"the latest checkpoint (size {head.size}) does not parse: {exc}")
    if signed.size != head.size or signed.root_hash != head.root_hash:
        _refuse(f"the stored checkpoint row of size {head.size} disagrees with its signed note")
    if edge_root != head.root_hash:
        _refuse(
            f"the stored tree of size {head.size} has root {_b64(edge_root)}, "
            f"but the signed checkpoint has {_b64(head.root_hash)}"
        )


def _check_consistent(
    size1: int, size2: int, root1: bytes, root2: bytes, nodes: Mapping[merkle.NodeKey, bytes]
) -> None:
    try:
        proof = merkle.consistency_proof(size1, size2, nodes)
        merkle.verify_consistency(size1, size2, proof, root1, root2)
    except (merkle.ProofError, merkle.MissingNodeError) as exc:
        _refuse(f"the new tree of size {size2} is not consistent with size {size1}: {exc}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _refuse(detail: str) -> NoReturn:
    _log.error("log sequencer refused to sign", detail=detail)
    raise LogInconsistent(detail)
