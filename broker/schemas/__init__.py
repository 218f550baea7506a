"""The language-neutral contract: JSON Schemas (draft 2020-12) of everything that crosses
agency boundaries, and a small offline validator for them.

The `.json` files under `v1/` are normative; see `broker/schemas/README.md`. Python API:

    validate_routing(routing)       broker hot path: schema + cross-field rules
    validate_body(routing, body)    SDK, before encryption and after decryption
    validate(name, instance)        any schema by name ("ack", "receipt", "log-leaf", ...)
    load(name), names(), registry(), validator(name)

Failures raise `SchemaError`, whose `errors` list every invalid field as `FieldError`.
"""

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
