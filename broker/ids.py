"""Identifiers and time: UUIDv7 ids, RFC 3339 UTC, epoch milliseconds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from uuid_utils.compat import uuid7

# Agency ids (the schemas' `agency-id`): an ISO 3166-1 alpha-2 country, or INT for an
# international or regional body, then one or two segments (`VN-GDC`, `VN-BLO-LAOCAI`,
# `INT-WCO-RILOAP`); at most AGENCY_ID_MAX characters, the width of every agency column.
AGENCY_ID_BODY = r"(?:[A-Z]{2}|INT)-[A-Z0-9]{2,10}(?:-[A-Z0-9]{2,10})?"
AGENCY_ID = rf"^{AGENCY_ID_BODY}$"
AGENCY_ID_MAX = 16
FOCAL_POINT_ID = rf"^{AGENCY_ID_BODY}/[a-z0-9][a-z0-9-]{{1,30}}$"
FOCAL_POINT_ID_MAX = 48
# The prefix of an international or regional body's id: it has no country.
INTERNATIONAL = "INT"


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
