"""Reading the transparency log: checkpoints, the verifier key, proofs, leaves and nodes.

Who reads which leaves (PROTOCOL.md 5.2, confidentiality): an auditor reads the leaves whose
events name an agency it oversees (every leaf when it oversees all agencies); an agency reads the
leaves that name it. An event names an agency through its `subject` (the agency id or one of its
focal points, ``AGENCY/...``) or the detail keys `sender`, `recipient`, `recipients` and `agency`.
Checkpoints, proofs and node hashes reveal no content and go to every authenticated caller.

`verify_stored` runs the independent verifier's checks (`broker.audit.verify`) on this store,
without HTTP: the console's "verify now" and the invariant checks use it.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from broker import keyring
from broker.audit import repository, verify
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
from broker.errors import BrokerError, Forbidden

T = TypeVar("T")

MAX_LEAVES = 1000
MAX_NODES = 4096


class NoCheckpoint(BrokerError, code="log.no_checkpoint"): ...


class OutOfRange(BrokerError, code="log.out_of_range"): ...


class LogCorrupt(BrokerError, code="log.corrupt"): ...


def b64(raw: bytes) -> str:
    """Standard base64 with padding, as C2SP checkpoints and the proof formats use."""
    return base64.b64encode(raw).decode()


async def latest(session: AsyncSession) -> Checkpoint:
    """The latest signed checkpoint."""
    head = await repository.latest_checkpoint(session)
    if head is None:
        raise NoCheckpoint("nothing has been sequenced yet; retry in a second")
    return head


async def latest_size(session: AsyncSession) -> int:
    """The size of the latest signed checkpoint (one scalar read, for proofs and pages)."""
    size = await repository.latest_size(session)
    if size is None:
        raise NoCheckpoint("nothing has been sequenced yet; retry in a second")
    return size


def verifier_key() -> str:
    """The log's note verifier key, `<origin>+<key id>+<base64 key>`, for partners to pin."""
    return keyring.load_or_create().log_verifier_key


async def _nodes(
    session: AsyncSession, keys: Sequence[merkle.NodeKey]
) -> dict[merkle.NodeKey, bytes]:
    nodes = await repository.get_nodes(session, keys)
    missing = [k for k in dict.fromkeys(keys) if k not in nodes]
    if missing:
        raise LogCorrupt(f"the log store lacks node {missing[0]}; operators must investigate")
    return nodes


async def _size(session: AsyncSession, size: int | None) -> int:
    tree = await latest_size(session)
    if size is None:
        return tree
    if not 0 <= size <= tree:
        raise OutOfRange(f"tree size {size} is beyond the latest checkpoint ({tree})")
    return size


async def inclusion(
    session: AsyncSession, index: int, size: int | None = None
) -> InclusionProofOut:
    """Inclusion proof of leaf `index` in the tree of `size` (default: the latest checkpoint)."""
    size = await _size(session, size)
    if not 0 <= index < size:
        raise OutOfRange(f"leaf {index} is not in a tree of size {size}")
    proof_keys = merkle.inclusion_proof_keys(index, size)
    root_keys = merkle.root_keys(size)
    nodes = await _nodes(session, [(0, index), *proof_keys, *root_keys])
    return InclusionProofOut(
        leafIdx=index,
        treeSize=size,
        leafHash=b64(nodes[(0, index)]),
        root=b64(merkle.root(size, nodes)),
        proof=[b64(h) for h in merkle.inclusion_proof(index, size, nodes)],
    )


async def consistency(
    session: AsyncSession, size1: int, size2: int | None = None
) -> ConsistencyProofOut:
    """Consistency proof from `size1` (> 0) to `size2` (default: the latest checkpoint)."""
    size2 = await _size(session, size2)
    if not 0 < size1 <= size2:
        raise OutOfRange(f"no consistency proof from {size1} to {size2} (need 0 < from <= to)")
    keys = [
        *merkle.consistency_proof_keys(size1, size2),
        *merkle.root_keys(size1),
        *merkle.root_keys(size2),
    ]
    nodes = await _nodes(session, keys)
    return ConsistencyProofOut(
        size1=size1,
        size2=size2,
        root1=b64(merkle.root(size1, nodes)),
        root2=b64(merkle.root(size2, nodes)),
        proof=[b64(h) for h in merkle.consistency_proof(size1, size2, nodes)],
    )


async def inclusion_proofs(
    session: AsyncSession, indexes: Collection[int], size: int
) -> dict[int, list[bytes]]:
    """Inclusion proofs of many leaves in the tree of `size`, from one batch of node reads."""
    wanted = sorted(i for i in set(indexes) if 0 <= i < size)
    keys = [k for i in wanted for k in merkle.inclusion_proof_keys(i, size)]
    nodes = await _nodes(session, keys)
    return {i: merkle.inclusion_proof(i, size, nodes) for i in wanted}


def visible_agencies(caller: Caller) -> frozenset[str] | None:
    """The agencies whose leaves and events the caller may read; None means all."""
    if caller.role is Role.auditor:
        return caller.audit_agencies
    if caller.role is Role.agency and caller.agency_id is not None:
        return frozenset({caller.agency_id})
    raise Forbidden(f"role {caller.role.value} may not read log leaves")


async def leaves(
    session: AsyncSession, caller: Caller, *, start: int, end: int | None, limit: int
) -> LeavesPage:
    """Leaves in [start, end) that the caller may read; the read itself is an audit event."""
    page = await _leaves_page(session, visible_agencies(caller), start, end, limit)
    stop = page.tree_size if end is None else min(end, page.tree_size)
    await audit.record(
        session,
        "audit.queried",
        actor=caller.actor,
        details={"query": "log.leaves", "range": [start, stop], "returned": len(page.leaves)},
    )
    return page


async def _leaves_page(
    session: AsyncSession,
    visible: frozenset[str] | None,
    start: int,
    end: int | None,
    limit: int,
) -> LeavesPage:
    size = await latest_size(session)
    stop = size if end is None else min(end, size)
    limit = min(max(limit, 1), MAX_LEAVES)
    rows = await repository.leaves(session, start=start, end=stop, limit=limit, agencies=visible)
    items = [LeafOut(index=i, leaf=b64(data), hash=b64(digest)) for i, data, digest in rows]
    full = len(items) == limit and items[-1].index + 1 < stop
    return LeavesPage(
        tree_size=size, start=start, leaves=items, next=items[-1].index + 1 if full else None
    )


async def nodes(session: AsyncSession, *, level: int, start: int, end: int | None) -> NodesPage:
    """Stored hashes of the complete subtrees of one level, for full offline verification."""
    size = await latest_size(session)
    count = size >> level if level < 64 else 0
    stop = min(count, start + MAX_NODES if end is None else min(end, start + MAX_NODES))
    rows = await repository.nodes_range(session, level, start, stop) if start < stop else []
    if len(rows) != max(stop - start, 0) or any(i != start + n for n, (i, _) in enumerate(rows)):
        raise LogCorrupt(f"the log store lacks nodes of level {level} in [{start}, {stop})")
    return NodesPage(tree_size=size, level=level, start=start, hashes=[b64(h) for _, h in rows])


class StoredLog:
    """`verify.LogSource` over this store: what the /v1/log routes would answer `caller`.

    `caller` None reads every leaf (the broker's own checks). Reads are not audit events: the
    verification's caller records one for the whole run.
    """

    def __init__(self, session: AsyncSession, caller: Caller | None) -> None:
        self.session = session
        self.caller = caller

    async def checkpoint(self) -> str:
        """The latest signed checkpoint note."""
        return (await self._answer(latest(self.session))).note

    async def cosigned_checkpoint(self, cosigned: int) -> str:
        """The latest checkpoint note with at least `cosigned` cosignatures, with their lines."""
        from broker.audit import witness  # it serves checkpoints through this module

        return await self._answer(witness.checkpoint_note(self.session, cosigned=cosigned))

    async def checkpoint_at(self, size: int) -> str:
        """The signed checkpoint of one tree size (a rotation's last under the old key)."""
        from broker.audit import witness

        return await self._answer(witness.checkpoint_note(self.session, size=size))

    async def key_history(self) -> dict[str, Any]:
        """The log's keys and rotations, as `GET /v1/log/key?format=json` answers: the
        broker's own checks follow a rotation as a partner's verifier does."""
        from broker.audit import keyrotation

        return await self._answer(keyrotation.log_keys(self.session))

    async def inclusion(self, index: int, size: int) -> dict[str, Any]:
        """An inclusion proof."""
        return (await self._answer(inclusion(self.session, index, size))).model_dump()

    async def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        """A consistency proof."""
        return (await self._answer(consistency(self.session, size1, size2))).model_dump()

    async def leaves(self, start: int, end: int) -> dict[str, Any]:
        """One page of the leaves the caller may read."""
        try:
            visible = None if self.caller is None else visible_agencies(self.caller)
            page = await _leaves_page(self.session, visible, start, end, MAX_LEAVES)
        except BrokerError as exc:
            raise _refused(exc) from None
        return page.model_dump()

    async def nodes(self, level: int, start: int, end: int) -> dict[str, Any]:
        """One page of stored subtree hashes."""
        return (
            await self._answer(nodes(self.session, level=level, start=start, end=end))
        ).model_dump()

    @staticmethod
    async def _answer(pending: Awaitable[T]) -> T:
        try:
            return await pending
        except BrokerError as exc:
            raise _refused(exc) from None


def _refused(exc: BrokerError) -> verify.VerifyError:
    # What the HTTP client reports for an error answer, minus the HTTP.
    return verify.VerifyError(
        "http", f"the log answered {exc.status_code} ({exc.code}: {exc.detail})"
    )


async def verify_stored(
    session: AsyncSession,
    log_key: str | None = None,
    *,
    caller: Caller | None = None,
    full: bool = False,
    index: int | None = None,
    previous: str | None = None,
) -> verify.Report:
    """Verify this broker's log as `broker audit verify` would, reading it through `session`.

    The latest checkpoint's signature (by `log_key`, default this broker's key); with `previous`
    (a signed checkpoint note seen before) its consistency with that one; with `full` every leaf
    and stored subtree hash against the root; with `index` that leaf's inclusion. Leaves are
    read as `caller` may read them (None: all). Raises `verify.VerifyError`; records nothing.
    """
    return await verify.verify_source(
        StoredLog(session, caller),
        log_key or verifier_key(),
        previous=previous,
        full=full,
        index=index,
    )
