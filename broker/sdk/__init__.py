"""The agency-side SDK: `BrokerClient` (HTTP), `Keystore` (private keys), and in `broker.sdk.agent`
compose/send and the inbox puller.

Names are imported on first use (PEP 562), so `import broker.sdk` stays cheap for the commands
that need one part only.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.sdk.client import BrokerAPIError, BrokerClient
    from broker.sdk.keystore import Keystore, KeystoreError, NoSigningKey, WrongPassphrase

_WHERE = {
    "BrokerClient": "broker.sdk.client",
    "BrokerAPIError": "broker.sdk.client",
    "Keystore": "broker.sdk.keystore",
    "KeystoreError": "broker.sdk.keystore",
    "NoSigningKey": "broker.sdk.keystore",
    "WrongPassphrase": "broker.sdk.keystore",
}

__all__ = [
    "BrokerAPIError",
    "BrokerClient",
    "Keystore",
    "KeystoreError",
    "NoSigningKey",
    "WrongPassphrase",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
