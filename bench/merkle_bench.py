"""Merkle log benchmark: append throughput, proof latency and node reads, against raw SHA-256.

Run: .venv/bin/python bench/merkle_bench.py [--proofs N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from broker.crypto.merkle import (
    MemoryTreeStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

SIZES = (1_000, 10_000, 100_000, 1_000_000)
ROW = "{:>11,}{:>11.2f}" + "{:>11.1f}" * 6


def sha256_rate(n: int = 1_000_000) -> float:
    """Node hashes per second with hashlib alone (65-byte inputs): the ceiling for appends."""
    data, sha = b"\x01" + bytes(64), hashlib.sha256
    t = time.perf_counter()
    for _ in range(n):
        sha(data).digest()
    return n / (time.perf_counter() - t)


def append_rate(batch: int, total: int = 200_000) -> float:
    """Leaves per second through append_leaves (leaf hashes precomputed) into a MemoryTreeStore."""
    hashes = [leaf_hash(i.to_bytes(8, "big")) for i in range(total)]
    store = MemoryTreeStore()
    t = time.perf_counter()
    for i in range(0, total, batch):
        store.append(hashes[i : i + batch])
    return total / (time.perf_counter() - t)


def proof_row(size: int, proofs: int, rng: random.Random) -> tuple[float, ...]:
    """Tree build s; per inclusion and consistency proof: node reads, µs to build, µs to verify."""
    t = time.perf_counter()
    hashes = [leaf_hash(i.to_bytes(8, "big")) for i in range(size)]
    store = MemoryTreeStore.from_leaf_hashes(hashes)
    build_s = time.perf_counter() - t
    # A size just below the full tree, so proofs include a right edge that is not a perfect node.
    n = size - 7
    tree_root = root(n, store)
    indexes = [rng.randrange(n) for _ in range(proofs)]
    reads = store.reads
    t = time.perf_counter()
    incl = [inclusion_proof(i, n, store) for i in indexes]
    incl_build = time.perf_counter() - t
    incl_reads = (store.reads - reads) / proofs
    t = time.perf_counter()
    for i, p in zip(indexes, incl, strict=True):
        verify_inclusion(hashes[i], i, n, p, tree_root)
    incl_verify = time.perf_counter() - t

    olds = [rng.randrange(1, n) for _ in range(proofs)]
    old_roots = [root(m, store) for m in olds]
    reads = store.reads
    t = time.perf_counter()
    cons = [consistency_proof(m, n, store) for m in olds]
    cons_build = time.perf_counter() - t
    cons_reads = (store.reads - reads) / proofs
    t = time.perf_counter()
    for m, r, p in zip(olds, old_roots, cons, strict=True):
        verify_consistency(m, n, p, r, tree_root)
    cons_verify = time.perf_counter() - t
    us = 1e6 / proofs
    return (
        build_s,
        incl_reads,
        incl_build * us,
        incl_verify * us,
        cons_reads,
        cons_build * us,
        cons_verify * us,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proofs", type=int, default=5_000, help="proofs per tree size")
    args = parser.parse_args()
    rng = random.Random(9162)

    ceiling = sha256_rate()
    print(f"hashlib SHA-256, 65-byte input: {ceiling:,.0f} hashes/s ({1e6 / ceiling:.2f} µs)")
    for batch in (100, 1000):
        rate = append_rate(batch)
        print(f"append_leaves, batches of {batch:>4}: {rate:,.0f} leaves/s ({rate / ceiling:.0%})")
    print()
    head = ("tree size", "build s", "incl reads", "build µs", "verify µs", "cons reads", "build µs")
    print(("{:>11}" * 8).format(*head, "verify µs"))
    for size in SIZES:
        print(ROW.format(size - 7, *proof_row(size, args.proofs, rng)))


if __name__ == "__main__":
    main()
