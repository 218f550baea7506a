"""The language-neutral contract: JSON Schemas (draft 2020-12) of everything that crosses
agency boundaries, and a small offline validator for them.

The `.json` files under `v1/` are normative; see `broker/schemas/README.md`. Python API:

    validate_routing(routing)       broker hot path: schema + cross-field rules
    validate_body(routing, body)    SDK, before encryption and after decryption
    validate(name, instance)        any schema by name ("ack", "receipt", "log-leaf", ...)
    load(name), names(), registry(), validator(name)

Failures raise `SchemaError`, whose `errors` list every invalid field as `FieldError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.schemas.validation import (
        BASE_URI,
        CURRENT_VERSION,
        FieldError,
        SchemaError,
        load,
        names,
        registry,
        validate,
        validate_body,
        validate_routing,
        validator,
    )

__all__ = [
    "BASE_URI",
    "CURRENT_VERSION",
    "FieldError",
    "SchemaError",
    "load",
    "names",
    "registry",
    "validate",
    "validate_body",
    "validate_routing",
    "validator",
]


def __getattr__(name: str) -> Any:
    """The validator is imported on first use (PEP 562): `broker.schemas.vocab` alone, which
    every CLI command's options need, must not load jsonschema (a few hundred ms at startup)."""
    if name in __all__:
        return getattr(importlib.import_module("broker.schemas.validation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
