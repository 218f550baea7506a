"""Reading the transparency log: checkpoints, the verifier key, proofs, leaves and nodes.

Who reads which leaves (PROTOCOL.md 5.2, confidentiality): an auditor reads the leaves whose
events name an agency it oversees (every leaf when it oversees all agencies); an agency reads the
leaves that name it. An event names an agency through its `subject` (the agency id or one of its
focal points, ``AGENCY/...``) or the detail keys `sender`, `recipient`, `recipients` and `agency`.
Checkpoints, proofs and node hashes reveal no content and go to every authenticated caller.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence

from sqlalchemy.orm import Session

from broker import keyring
from broker.audit import repository
from broker.audit import service as audit
from broker.audit.models import Checkpoint
from broker.audit.schemas import (
    ConsistencyProofOut,
    InclusionProofOut,
    LeafOut,
    LeavesPage,
    NodesPage,
)
from broker.auth.service import Caller, Role
from broker.crypto import merkle
from broker.errors import Forbidden, error

MAX_LEAVES = 1000
MAX_NODES = 4096

NoCheckpoint = error("log.no_checkpoint", 404, "The log has no checkpoint yet")
OutOfRange = error("log.out_of_range", 422, "Outside the signed tree")
LogCorrupt = error("log.corrupt", 500, "The stored log is damaged")


def b64(raw: bytes) -> str:
    """Standard base64 with padding, as C2SP checkpoints and the proof formats use."""
    return base64.b64encode(raw).decode()


def latest(session: Session) -> Checkpoint:
    """The latest signed checkpoint."""
    head = repository.latest_checkpoint(session)
    if head is None:
        raise NoCheckpoint("nothing has been sequenced yet; retry in a second")
    return head


def latest_size(session: Session) -> int:
    """The size of the latest signed checkpoint (one scalar read, for proofs and pages)."""
    size = repository.latest_size(session)
    if size is None:
        raise NoCheckpoint("nothing has been sequenced yet; retry in a second")
    return size


def verifier_key() -> str:
    """The log's note verifier key, `<origin>+<key id>+<base64 key>`, for partners to pin."""
    return keyring.load_or_create().log_verifier_key


def _nodes(session: Session, keys: Sequence[merkle.NodeKey]) -> dict[merkle.NodeKey, bytes]:
    nodes = repository.get_nodes(session, keys)
    missing = [k for k in dict.fromkeys(keys) if k not in nodes]
    if missing:
        raise LogCorrupt(f"the log store lacks node {missing[0]}; operators must investigate")
    return nodes


def _size(session: Session, size: int | None) -> int:
    tree = latest_size(session)
    if size is None:
        return tree
    if not 0 <= size <= tree:
        raise OutOfRange(f"tree size {size} is beyond the latest checkpoint ({tree})")
    return size


def inclusion(session: Session, index: int, size: int | None = None) -> InclusionProofOut:
    """Inclusion proof of leaf `index` in the tree of `size` (default: the latest checkpoint)."""
    size = _size(session, size)
    if not 0 <= index < size:
        raise OutOfRange(f"leaf {index} is not in a tree of size {size}")
    proof_keys = merkle.inclusion_proof_keys(index, size)
    root_keys = merkle.root_keys(size)
    nodes = _nodes(session, [(0, index), *proof_keys, *root_keys])
    return InclusionProofOut(
        leafIdx=index,
        treeSize=size,
        leafHash=b64(nodes[(0, index)]),
        root=b64(merkle.root(size, nodes)),
        proof=[b64(h) for h in merkle.inclusion_proof(index, size, nodes)],
    )


def consistency(session: Session, size1: int, size2: int | None = None) -> ConsistencyProofOut:
    """Consistency proof from `size1` (> 0) to `size2` (default: the latest checkpoint)."""
    size2 = _size(session, size2)
    if not 0 < size1 <= size2:
        raise OutOfRange(f"no consistency proof from {size1} to {size2} (need 0 < from <= to)")
    keys = [
        *merkle.consistency_proof_keys(size1, size2),
        *merkle.root_keys(size1),
        *merkle.root_keys(size2),
    ]
    nodes = _nodes(session, keys)
    return ConsistencyProofOut(
        size1=size1,
        size2=size2,
        root1=b64(merkle.root(size1, nodes)),
        root2=b64(merkle.root(size2, nodes)),
        proof=[b64(h) for h in merkle.consistency_proof(size1, size2, nodes)],
    )


def inclusion_proofs(
    session: Session, indexes: Collection[int], size: int
) -> dict[int, list[bytes]]:
    """Inclusion proofs of many leaves in the tree of `size`, from one batch of node reads."""
    wanted = sorted(i for i in set(indexes) if 0 <= i < size)
    keys = [k for i in wanted for k in merkle.inclusion_proof_keys(i, size)]
    nodes = _nodes(session, keys)
    return {i: merkle.inclusion_proof(i, size, nodes) for i in wanted}


def visible_agencies(caller: Caller) -> frozenset[str] | None:
    """The agencies whose leaves and events the caller may read; None means all."""
    if caller.role is Role.auditor:
        return caller.audit_agencies
    if caller.role is Role.agency and caller.agency_id is not None:
        return frozenset({caller.agency_id})
    raise Forbidden(f"role {caller.role.value} may not read log leaves")


def leaves(
    session: Session, caller: Caller, *, start: int, end: int | None, limit: int
) -> LeavesPage:
    """Leaves in [start, end) that the caller may read; the read itself is an audit event."""
    visible = visible_agencies(caller)
    size = latest_size(session)
    stop = size if end is None else min(end, size)
    limit = min(max(limit, 1), MAX_LEAVES)
    rows = repository.leaves(session, start=start, end=stop, limit=limit, agencies=visible)
    items = [LeafOut(index=i, leaf=b64(data), hash=b64(digest)) for i, data, digest in rows]
    full = len(items) == limit and items[-1].index + 1 < stop
    audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={"query": "log.leaves", "range": [start, stop], "returned": len(items)},
    )
    return LeavesPage(
        tree_size=size, start=start, leaves=items, next=items[-1].index + 1 if full else None
    )


def nodes(session: Session, *, level: int, start: int, end: int | None) -> NodesPage:
    """Stored hashes of the complete subtrees of one level, for full offline verification."""
    size = latest_size(session)
    count = size >> level if level < 64 else 0
    stop = min(count, start + MAX_NODES if end is None else min(end, start + MAX_NODES))
    rows = repository.nodes_range(session, level, start, stop) if start < stop else []
    if len(rows) != max(stop - start, 0) or any(i != start + n for n, (i, _) in enumerate(rows)):
        raise LogCorrupt(f"the log store lacks nodes of level {level} in [{start}, {stop})")
    return NodesPage(tree_size=size, level=level, start=start, hashes=[b64(h) for _, h in rows])
