"""Envelope throughput against the physical limit of its primitives.

For 1 and 26 recipients and a 4 KB body, measures per second: building an envelope, the
broker's checks (parse_outer_header + verify_outer + check_jwe_structure, PROTOCOL 4.4 steps
1-2, 4-5 and 10) and a recipient's open (4.5 steps 3-6). Next to each it puts the floor: the
time of the public-key operations the step cannot avoid, measured in the same run on the same
messages (Ed25519 over the real signing inputs, X25519 key generation and exchange).
"of floor" is floor time / measured time: 100 % would mean all time goes to cryptography.

Keys come from fixed seeds, so kids and sizes repeat from run to run; the ephemeral keys and
IVs of the JWE are fresh, as they must be.

    .venv/bin/python bench/envelope_bench.py [--seconds 1.0] [--body-bytes 4096]
"""

import argparse
import hashlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker.crypto import envelope
from broker.crypto.keys import EncryptionKey, SigningKey

SENDER = "VN-GDC"


def seeded(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per second of `fn`, timed for about `seconds` after a short warm-up."""
    for _ in range(3):
        fn()
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(10):
            fn()
        count += 10
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


@dataclass
class Row:
    recipients: int
    size: int
    operation: str
    per_second: float
    floor_us: float

    def line(self) -> str:
        us = 1e6 / self.per_second
        return (
            f"{self.recipients:>10} {self.size:>10,} {self.operation:<15} "
            f"{self.per_second:>10,.0f} {us:>9,.1f} {self.floor_us:>9,.1f} "
            f"{self.floor_us / us:>8.0%}"
        )


def scenario(n: int, body_bytes: int, seconds: float) -> tuple[list[Row], dict[str, float]]:
    signer = SigningKey.from_seed(seeded(SENDER, "sig"))
    agencies = [f"A{i:02d}-BENCH" for i in range(n)]
    enc = {a: EncryptionKey.from_seed(seeded(a, "enc")) for a in agencies}
    routing = {
        "v": 1,
        "mid": "0190f3c2-6a1e-7c3b-9d2e-5b8f4a1c2d3e",
        "iat": 1767225600,
        "exp": 1768435200,
        "sender": SENDER,
        "sender_fp": f"{SENDER}/fp-hcm-01",
        "recipients": agencies,
        "agreement": "MEKONG-DRAGON",
        "operation": "MEKONG-DRAGON-V",
        "offence": "narcotics",
        "subject_types": ["person", "vessel"],
        "priority": "urgent",
    }
    text = ("Container MSCU 123456-7, reefer, Hai Phong to Busan. " * 200)[:body_bytes]
    body = {"title": "Vessel of interest", "text": text}
    keys = {a: k.public for a, k in enc.items()}
    directory_jwk = {**signer.public.jwk, "agency": SENDER}
    valid_kids = {a: {k.kid} for a, k in enc.items()}
    me = agencies[-1]

    token = envelope.build_envelope(routing, body, signer, keys)
    outer_input = token.rsplit(".", 1)[0].encode()
    inner = envelope.open_envelope(
        token, my_agency=me, my_enc_keys=[enc[me]], sender_sig_jwk=directory_jwk
    ).inner_jws
    inner_input = inner.rsplit(".", 1)[0].encode()

    # The primitives, on the real messages of this scenario.
    public = signer.private_key.public_key()
    outer_sig, inner_sig = signer.sign(outer_input), signer.sign(inner_input)
    peer = X25519PrivateKey.generate().public_key()
    prim = {
        "Ed25519 sign outer": 1e6 / rate(lambda: signer.sign(outer_input), seconds),
        "Ed25519 sign inner": 1e6 / rate(lambda: signer.sign(inner_input), seconds),
        "Ed25519 verify outer": 1e6 / rate(lambda: public.verify(outer_sig, outer_input), seconds),
        "Ed25519 verify inner": 1e6 / rate(lambda: public.verify(inner_sig, inner_input), seconds),
        "X25519 keygen": 1e6 / rate(X25519PrivateKey.generate, seconds),
        "X25519 exchange": 1e6 / rate(lambda: enc[me].private_key.exchange(peer), seconds),
    }
    ecdh = prim["X25519 exchange"]

    def broker() -> None:
        envelope.parse_outer_header(token)
        outer = envelope.verify_outer(token, directory_jwk)
        envelope.check_jwe_structure(outer.jwe, valid_kids)

    def recipient() -> None:
        envelope.open_envelope(
            token, my_agency=me, my_enc_keys=[enc[me]], sender_sig_jwk=directory_jwk
        )

    floors = {
        "build": prim["Ed25519 sign inner"]
        + prim["Ed25519 sign outer"]
        + n * (prim["X25519 keygen"] + ecdh),
        "broker verify": prim["Ed25519 verify outer"],
        "recipient open": prim["Ed25519 verify outer"] + prim["Ed25519 verify inner"] + ecdh,
    }
    ops: dict[str, Callable[[], object]] = {
        "build": lambda: envelope.build_envelope(routing, body, signer, keys),
        "broker verify": broker,
        "recipient open": recipient,
    }
    rows = [Row(n, len(token), name, rate(fn, seconds), floors[name]) for name, fn in ops.items()]
    return rows, prim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure")
    parser.add_argument("--body-bytes", type=int, default=4096, help="size of body.text")
    args = parser.parse_args()

    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("cryptography", "jwcrypto")
    )
    print(
        f"Python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs), "
        f"{versions}, body {args.body_bytes} B, {args.seconds:g} s per figure"
    )
    header = (
        f"{'recipients':>10} {'size (B)':>10} {'operation':<15} "
        f"{'ops/s':>10} {'µs/op':>9} {'floor µs':>9} {'of floor':>8}"
    )
    results = [scenario(n, args.body_bytes, args.seconds) for n in (1, 26)]
    print()
    print("primitives (µs/op, on the 1- and 26-recipient messages):")
    for name in results[0][1]:
        print(f"  {name:<22} {results[0][1][name]:>8.1f} {results[1][1][name]:>8.1f}")
    print()
    print(header)
    for rows, _ in results:
        for row in rows:
            print(row.line())
    one, many = ({r.operation: r for r in rows} for rows, _ in results)
    print()
    for op in one:
        print(f"26 vs 1 recipient, {op}: {one[op].per_second / many[op].per_second:.1f}x slower")


if __name__ == "__main__":
    main()
