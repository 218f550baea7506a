"""A deliberately naive RFC 9162 Merkle tree, written from the RFC's text, to check the broker.

Shares no code with `broker.crypto.merkle`: MTH, PATH and PROOF are the recursive definitions of
RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1, and the verifiers follow §2.1.3.2 and §2.1.4.2 step by
step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(entry: bytes) -> bytes:
    return _h(b"\x00" + entry)


def _k(n: int) -> int:
    # The largest power of two smaller than n.
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (the leaves are already hashed)."""
    n = len(hashes)
    if n == 0:
        return _h(b"")
    if n == 1:
        return hashes[0]
    k = _k(n)
    return _h(b"\x01" + mth(hashes[:k]) + mth(hashes[k:]))


def path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of §2.1.3.1."""
    n = len(hashes)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, hashes[:k]), mth(hashes[k:])]
    return [*path(m - k, hashes[k:]), mth(hashes[:k])]


def proof(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of §2.1.4.1."""
    return _subproof(m, hashes, True)


def _subproof(m: int, hashes: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if b else [mth(hashes)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, hashes[:k], b), mth(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), mth(hashes[:k])]


def verify_inclusion(
    leaf: bytes, index: int, size: int, inclusion: Sequence[bytes], root: bytes
) -> bool:
    """§2.1.3.2, step by step."""
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in inclusion:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _h(b"\x01" + p + r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _h(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, consistency: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """§2.1.4.2, step by step."""
    if size1 == size2:
        return not consistency and root1 == root2
    if size1 == 0 or size1 > size2 or not consistency:
        return False
    items = list(consistency)
    if size1 & (size1 - 1) == 0:  # a power of two: prepend first_hash
        items = [root1, *items]
    fn, sn = size1 - 1, size2 - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = items[0]
    for c in items[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = _h(b"\x01" + c + fr)
            sr = _h(b"\x01" + c + sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _h(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0
