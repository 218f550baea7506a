"""Identifiers and time: UUIDv7 ids, RFC 3339 UTC, epoch milliseconds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    """A time-ordered UUIDv7 (RFC 9562)."""
    return uuid7()


def whole_number(value: str, *, max_digits: int = 18) -> int | None:
    """`value` as a whole number if it is 1 to `max_digits` ASCII digits, else None.

    `str.isdigit()` also accepts superscripts and other scripts' digits, which `int()` refuses.
    """
    if 0 < len(value) <= max_digits and value.isascii() and value.isdigit():
        return int(value)
    return None


def utcnow() -> datetime:
    """Aware UTC now."""
    return datetime.now(UTC)


def epoch_ms(moment: datetime) -> int:
    """Integer epoch milliseconds (log leaves carry integers only)."""
    return int(moment.timestamp() * 1000)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC with a Z suffix and millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
