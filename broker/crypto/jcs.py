"""RFC 8785 JSON Canonicalization Scheme, and the integer-only leaf encoding of the exchange log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rfc8785


class CanonicalError(ValueError):
    """The value cannot be canonicalized (or is not allowed in a log leaf)."""


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical UTF-8 bytes of a JSON value (dict, list, str, int, float, bool, None)."""
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as e:
        raise CanonicalError(str(e)) from None


def _integers_only(value: Any, where: str) -> Any:
    # Copy as plain dicts and lists (rfc8785 serializes only those), refusing floats anywhere:
    # leaves carry integers only, so every party derives the same bytes without ES6 number
    # formatting, and a float that slipped in (e.g. a parsed "1.0") is a bug to surface.
    if isinstance(value, float):
        raise CanonicalError(f"{where or '/'}: floats are not allowed in log leaves")
    if isinstance(value, Mapping):
        return {k: _integers_only(v, f"{where}/{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_integers_only(v, f"{where}/{i}") for i, v in enumerate(value)]
    return value


def leaf_bytes(event: Mapping[str, Any]) -> bytes:
    """Log leaf bytes of an event: UTF-8(JCS(event)), integers only (PROTOCOL.md §5.2)."""
    if not isinstance(event, Mapping):
        raise CanonicalError("a log leaf must be a JSON object")
    return canonical(_integers_only(event, ""))
