"""RFC 9162 Merkle tree: hashing, perfect-subtree node storage, proofs and strict verifiers.

Storage model: the hash of every perfect (complete) subtree is stored once, keyed by
``(level, index)``; node ``(level, i)`` covers leaves ``[i << level, (i + 1) << level)`` and level 0
holds the leaf hashes. Nodes never change once written, so a SQL table with primary key
``(level, index)`` is append-only. A tree of size n is the perfect subtrees given by the binary
digits of n, so roots and proofs need O(log n) node reads, fetched in one batch.

Pure Python with hashlib only: the auditor's offline verifier imports this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeKey: TypeAlias = tuple[int, int]
"""``(level, index)`` of a perfect subtree."""

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof did not verify; ``code`` is a stable machine-readable reason."""

    # Codes: index_out_of_range, size_order, empty_tree, hash_length, proof_length, root_mismatch.

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class MissingNodeError(LookupError):
    """The store lacks a node that every tree of the requested size must have."""


class TreeStore(Protocol):
    """Read access to stored perfect-subtree hashes."""

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Return the stored hashes among ``keys`` (one batch query); absent keys are omitted."""
        ...


NodeSource: TypeAlias = TreeStore | Mapping[NodeKey, bytes]
"""A store, or nodes the caller already fetched with the matching ``*_keys`` function."""

_Plan: TypeAlias = list[tuple[NodeKey, ...]]
"""Proof items in order; each is the hash of one node or the fold of a right-edge range."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(b"\x01" + left + right).digest()


def _fold(hashes: Sequence[bytes]) -> bytes:
    # Hashes of the perfect subtrees of a range, largest (leftmost) first. RFC 9162 splits at the
    # largest power of two below the size, so the range hash nests them from the right.
    if not hashes:
        return EMPTY_ROOT
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = _sha256(b"\x01" + left + h).digest()
    return h


def _edge(start: int, end: int) -> tuple[NodeKey, ...]:
    # Perfect subtrees covering [start, end), largest first. Valid when start is a multiple of a
    # power of two >= end - start, which holds for every range a root or a proof needs.
    keys = []
    pos, n = start, end - start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            keys.append((level, pos >> level))
            pos += 1 << level
    return tuple(keys)


def _path(index: int, size: int, level: int) -> _Plan:
    # Siblings from node (level, index >> level) up to the root of a tree of `size` leaves (cf.
    # transparency-dev proof.go). The paths to `index` and `size - 1` part below level `inner`:
    # lower siblings lie in a complete subtree, except the top one, on the right edge, which may
    # be incomplete; higher siblings are the complete left subtrees where `index` has a 1 bit.
    inner = (index ^ (size - 1)).bit_length()
    plan: _Plan = [((lv, (index >> lv) ^ 1),) for lv in range(level, inner - 1)]
    if level < inner:
        lv = inner - 1
        plan.append(_edge(((index >> lv) + 1) << lv, size))
    plan += [
        ((lv, (index >> lv) - 1),) for lv in range(inner, index.bit_length()) if index >> lv & 1
    ]
    return plan


def _inclusion_plan(index: int, size: int) -> _Plan:
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} not in a tree of size {size}")
    return _path(index, size, 0)


def _consistency_plan(size1: int, size2: int) -> _Plan:
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to {size2}")
    if size1 == size2:
        return []
    # The old tree ends with a perfect subtree of 2**shift leaves; the proof starts from it,
    # omitted when it is the whole old tree because the verifier already has that root.
    shift = (size1 & -size1).bit_length() - 1
    seed: _Plan = [] if size1 == 1 << shift else [((shift, (size1 - 1) >> shift),)]
    return seed + _path(size1 - 1, size2, shift)


def _keys(plan: _Plan) -> list[NodeKey]:
    return [key for item in plan for key in item]


def _fetch(nodes: NodeSource, keys: list[NodeKey]) -> list[bytes]:
    got = nodes if isinstance(nodes, Mapping) else nodes.get_nodes(keys)
    try:
        return [got[key] for key in keys]
    except KeyError as e:
        raise MissingNodeError(f"tree store has no node {e.args[0]}") from None


def _resolve(plan: _Plan, nodes: NodeSource) -> list[bytes]:
    hashes = iter(_fetch(nodes, _keys(plan)))
    return [_fold([next(hashes) for _ in item]) for item in plan]


def root_keys(size: int) -> list[NodeKey]:
    """Keys of the perfect subtrees whose fold is the root of a tree of ``size`` leaves."""
    if size < 0:
        raise ValueError("negative tree size")
    return list(_edge(0, size))


def inclusion_proof_keys(index: int, size: int) -> list[NodeKey]:
    """Keys that ``inclusion_proof(index, size, ...)`` reads."""
    return _keys(_inclusion_plan(index, size))


def consistency_proof_keys(size1: int, size2: int) -> list[NodeKey]:
    """Keys that ``consistency_proof(size1, size2, ...)`` reads."""
    return _keys(_consistency_plan(size1, size2))


def root(size: int, nodes: NodeSource) -> bytes:
    """Root hash of the tree of the first ``size`` leaves."""
    return _fold(_fetch(nodes, root_keys(size)))


def inclusion_proof(index: int, size: int, nodes: NodeSource) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of size ``size``."""
    return _resolve(_inclusion_plan(index, size), nodes)


def consistency_proof(size1: int, size2: int, nodes: NodeSource) -> list[bytes]:
    """RFC 9162 consistency proof from tree size ``size1`` (> 0) to ``size2``."""
    return _resolve(_consistency_plan(size1, size2), nodes)


def append_leaves(
    size: int, leaf_hashes: Iterable[bytes], nodes: NodeSource
) -> tuple[list[tuple[NodeKey, bytes]], bytes]:
    """Append leaf hashes to a tree of ``size`` leaves; return the new nodes and the new root."""
    # Reads only the right edge, root_keys(size), largest subtree first. New nodes come out with
    # increasing indexes within each level, leaves included as level 0.
    stack = _fetch(nodes, root_keys(size))
    new: list[tuple[NodeKey, bytes]] = []
    pos = size
    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError("leaf hashes must be 32 bytes")
        new.append(((0, pos), h))
        # Each trailing 1 bit of pos closes a perfect subtree with the stack's last hash.
        level, index = 0, pos
        while index & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            level, index = level + 1, index >> 1
            new.append(((level, index), h))
        stack.append(h)
        pos += 1
    return new, _fold(stack)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH (RFC 9162 §2.1.1) of a list of leaf hashes."""
    return root(len(hashes), MemoryTreeStore.from_leaf_hashes(hashes))


class MemoryTreeStore:
    """In-memory TreeStore, ``levels[l][i]`` is node (l, i); counts reads for tests and benches."""

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = []
        self.queries = 0
        self.reads = 0

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes]) -> MemoryTreeStore:
        """Build a store in one pass, level by level (faster than appending for large trees)."""
        store = cls()
        row = list(hashes)
        while row:
            store.levels.append(row)
            row = [
                _sha256(b"\x01" + a + b).digest() for a, b in zip(row[::2], row[1::2], strict=False)
            ]
        return store

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self.levels[0]) if self.levels else 0

    def get_nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        """Return the stored hashes among ``keys``."""
        self.queries += 1
        self.reads += len(keys)
        levels = self.levels
        return {
            (lv, i): levels[lv][i]
            for lv, i in keys
            if 0 <= lv < len(levels) and 0 <= i < len(levels[lv])
        }

    def put_nodes(self, nodes: Iterable[tuple[NodeKey, bytes]]) -> None:
        """Store new nodes; each must be the next index of its level, as from append_leaves."""
        for (lv, i), h in nodes:
            while len(self.levels) <= lv:
                self.levels.append([])
            if i != len(self.levels[lv]):
                raise ValueError(f"node {(lv, i)} is not the next one of its level")
            self.levels[lv].append(h)

    def append(self, leaf_hashes: Iterable[bytes]) -> bytes:
        """Append leaf hashes and return the new root."""
        new, new_root = append_leaves(self.size, leaf_hashes, self)
        self.put_nodes(new)
        return new_root


def _check_hashes(*hashes: bytes) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError("hash_length", "every hash must be 32 bytes")


def _decomp(index: int, size: int) -> tuple[int, int]:
    # Lengths of the inner and border parts of the inclusion proof for `index` (see _path).
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def _chain(seed: bytes, proof: Sequence[bytes], index: int, inner: int, *, old: bool) -> bytes:
    # Recompute a root from `seed` at the bottom of the path. With old=True, only the inner
    # siblings to the left count: that yields the root of the earlier tree ending at the path.
    h = seed
    for i, sibling in enumerate(proof[:inner]):
        if index >> i & 1:
            h = _sha256(b"\x01" + sibling + h).digest()
        elif not old:
            h = _sha256(b"\x01" + h + sibling).digest()
    for sibling in proof[inner:]:
        h = _sha256(b"\x01" + sibling + h).digest()
    return h


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an RFC 9162 §2.1.3.2 inclusion proof; raise ProofError if it does not verify."""
    if not 0 <= index < size:
        raise ProofError("index_out_of_range", f"index {index} not below size {size}")
    _check_hashes(leaf_hash, root, *proof)
    inner, border = _decomp(index, size)
    if len(proof) != inner + border:
        raise ProofError("proof_length", f"{len(proof)} hashes, expected {inner + border}")
    if _chain(leaf_hash, proof, index, inner, old=False) != root:
        raise ProofError("root_mismatch")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check an RFC 9162 §2.1.4.2 consistency proof; raise ProofError if it does not verify."""
    if not 0 <= size1 <= size2:
        raise ProofError("size_order", f"sizes {size1} to {size2}")
    # Stricter than Go, which compares roots of equal sizes without checking their length.
    _check_hashes(root1, root2, *proof)
    if size1 == size2:
        if proof:
            raise ProofError("proof_length", "equal sizes need an empty proof")
        if root1 != root2 or (size1 == 0 and root1 != EMPTY_ROOT):
            raise ProofError("root_mismatch")
        return
    if size1 == 0:
        raise ProofError("empty_tree", "consistency proof from an empty tree is meaningless")
    inner, border = _decomp(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    start = 0 if size1 == 1 << shift else 1
    if len(proof) != start + inner + border:
        raise ProofError("proof_length", f"{len(proof)} hashes, expected {start + inner + border}")
    seed, path, mask = (proof[0] if start else root1), proof[start:], (size1 - 1) >> shift
    if _chain(seed, path, mask, inner, old=True) != root1:
        raise ProofError("root_mismatch", "proof does not match root1")
    if _chain(seed, path, mask, inner, old=False) != root2:
        raise ProofError("root_mismatch", "proof does not match root2")
