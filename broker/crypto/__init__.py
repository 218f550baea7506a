"""Crypto core: envelopes, keys, strict JSON, Merkle log and signed notes.

The only package that imports `cryptography` and jwcrypto. It imports nothing from the rest
of `broker`, so the agency SDK can use it with the base dependencies.
"""

from broker.crypto.envelope import (
    OpenedAlert,
    OuterPayload,
    build_envelope,
    check_jwe_structure,
    open_envelope,
    parse_outer_header,
    sign_compact,
    verify_compact,
    verify_outer,
)
from broker.crypto.errors import CryptoError
from broker.crypto.keys import (
    EncryptionKey,
    PublicJWK,
    SigningKey,
    generate_passphrase,
    load_encryption_key,
    load_signing_key,
    parse_public_jwk,
    save_private_key,
    thumbprint,
)

__all__ = [
    "CryptoError",
    "EncryptionKey",
    "OpenedAlert",
    "OuterPayload",
    "PublicJWK",
    "SigningKey",
    "build_envelope",
    "check_jwe_structure",
    "generate_passphrase",
    "load_encryption_key",
    "load_signing_key",
    "open_envelope",
    "parse_outer_header",
    "parse_public_jwk",
    "save_private_key",
    "sign_compact",
    "thumbprint",
    "verify_compact",
    "verify_outer",
]
