"""Search helpers for leak checks: a secret in plain form and as it would look base64-encoded."""

from __future__ import annotations

import base64


def needles(secret: bytes) -> list[bytes]:
    """`secret` plain, hex, and base64 / base64url at each of the three byte alignments.

    A base64 encoder starting inside a larger buffer writes the secret at an offset of 0, 1 or
    2 bytes within its 3-byte groups; the characters that depend only on the secret's own bytes
    are searched (the first and last group, which mix in neighbouring bytes, are dropped).
    """
    found = [secret, secret.hex().encode()]
    for shift in range(3):
        data = b"\0" * shift + secret
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(data).rstrip(b"=")
            core = text[4 if shift else 0 : -4]
            if len(core) >= 16:
                found.append(core)
    return list(dict.fromkeys(found))
