"""The agency-side SDK: `BrokerClient` (HTTP), `Keystore` (private keys), the errors they and
`broker.sdk.agent` raise, and in `broker.sdk.agent` compose/send and the inbox puller. The guide
is docs/sdk.md.

Names are imported on first use (PEP 562), so `import broker.sdk` stays cheap for the commands
that need one part only.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.crypto.errors import CryptoError
    from broker.schemas import SchemaError
    from broker.sdk.client import BrokerAPIError, BrokerClient
    from broker.sdk.keystore import Keystore, KeystoreError, NoSigningKey, WrongPassphrase

_WHERE = {
    "BrokerClient": "broker.sdk.client",
    "BrokerAPIError": "broker.sdk.client",
    "Keystore": "broker.sdk.keystore",
    "KeystoreError": "broker.sdk.keystore",
    "NoSigningKey": "broker.sdk.keystore",
    "WrongPassphrase": "broker.sdk.keystore",
    # Raised by compose (an invalid body or routing) and send (a receipt that does not match).
    "SchemaError": "broker.schemas",
    "CryptoError": "broker.crypto.errors",
}

__all__ = [
    "BrokerAPIError",
    "BrokerClient",
    "CryptoError",
    "Keystore",
    "KeystoreError",
    "NoSigningKey",
    "SchemaError",
    "WrongPassphrase",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
