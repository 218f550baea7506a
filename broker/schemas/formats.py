"""Custom `format` checkers: identifier check digits and code lists.

Each schema also carries a `pattern` for the same field, so a partner whose validator does not
assert formats still checks the shape; these functions add what a regex cannot (check digits,
calendar validity, membership of ISO 3166-1). They accept only `str`; the schema's `type`
keyword reports anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from functools import cache
from typing import Final

import pycountry

# ISO 3166-1 user-assigned codes that partners use but pycountry (Debian iso-codes) lacks.
EXTRA_COUNTRY_CODES: Final = frozenset({"XK"})  # Kosovo (EU and UN practice)
# UN/LOCODE also allocates XZ to installations in international waters.
EXTRA_LOCODE_COUNTRIES: Final = frozenset({"XZ"})

_ISO6346 = re.compile(r"[A-Z]{3}[UJZ][0-9]{7}")
_IMO = re.compile(r"IMO[0-9]{7}")
_AWB = re.compile(r"([0-9]{3})-?([0-9]{7})([0-9])")
_UNLOCODE = re.compile(r"([A-Z]{2})[A-Z2-9]{3}")
_ALPHA2 = re.compile(r"[A-Z]{2}")
_HS = re.compile(r"[0-9]{6}(?:[0-9]{2}|[0-9]{4})?")
_PARTIAL_DATE = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")
_CAS = re.compile(r"([1-9][0-9]{1,6})-([0-9]{2})-([0-9])")

# ISO 6346 letter values: A=10 upwards, skipping multiples of 11 (11, 22, 33).
_LETTER_VALUE: Final[dict[str, int]] = {}
_next = 10
for _letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    if _next % 11 == 0:
        _next += 1
    _LETTER_VALUE[_letter] = _next
    _next += 1


def iso6346_check_digit(first10: str) -> int:
    """Check digit of an owner code + category + 6-digit serial (`CSQU305438` -> 3).

    Sum of value x 2**position, modulo 11; a remainder of 10 is written as 0, as ISO 6346
    prescribes (which is why, for those numbers, some single-character errors go undetected).
    """
    total = sum(
        (_LETTER_VALUE[ch] if ch.isalpha() else int(ch)) << pos for pos, ch in enumerate(first10)
    )
    return total % 11 % 10


def is_iso6346(value: str) -> bool:
    """A freight container number (BIC owner code, category U/J/Z, serial, check digit)."""
    return bool(_ISO6346.fullmatch(value)) and iso6346_check_digit(value[:10]) == int(value[10])


def imo_check_digit(six: str) -> int:
    """IMO ship number check digit: digits weighted 7..2, sum modulo 10."""
    return sum(int(d) * w for d, w in zip(six, range(7, 1, -1), strict=True)) % 10


def is_imo_number(value: str) -> bool:
    """`IMO` + 7 digits, the last being the check digit (`IMO9074729`)."""
    return bool(_IMO.fullmatch(value)) and imo_check_digit(value[3:9]) == int(value[9])


def is_awb(value: str) -> bool:
    """Air waybill: 3-digit airline prefix, 7-digit serial, check digit = serial mod 7."""
    m = _AWB.fullmatch(value)
    return m is not None and int(m[2]) % 7 == int(m[3])


@cache
def _alpha2_codes() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries) | EXTRA_COUNTRY_CODES


def is_iso3166_alpha2(value: str) -> bool:
    """An assigned ISO 3166-1 alpha-2 code (pycountry) or one of `EXTRA_COUNTRY_CODES`."""
    return bool(_ALPHA2.fullmatch(value)) and value in _alpha2_codes()


def is_unlocode(value: str) -> bool:
    """UN/LOCODE without the space (`VNSGN`); the country part must be a valid alpha-2 code.

    Membership of the UNECE code list itself is a reference-data check, not a format.
    """
    m = _UNLOCODE.fullmatch(value)
    return m is not None and (is_iso3166_alpha2(m[1]) or m[1] in EXTRA_LOCODE_COUNTRIES)


def is_hs_code(value: str) -> bool:
    """HS code of 6, 8 or 10 digits; chapters 00 and 77 (reserved) are rejected.

    The nomenclature edition travels next to it (`hs_edition`); no table lookup here.
    """
    return bool(_HS.fullmatch(value)) and value[:2] not in {"00", "77"}


def cas_check_digit(digits: str) -> int:
    """CAS Registry Number check digit of the digits before it (`10379` -> 7): the digits
    weighted 1, 2, 3, ... from the right, summed, modulo 10."""
    return sum(int(d) * w for w, d in enumerate(reversed(digits), start=1)) % 10


def is_cas_number(value: str) -> bool:
    """CAS Registry Number: 2-7 digits, 2 digits, check digit, hyphenated (`103-79-7`)."""
    m = _CAS.fullmatch(value)
    return m is not None and cas_check_digit(m[1] + m[2]) == int(m[3])


def is_partial_date(value: str) -> bool:
    """`YYYY`, `YYYY-MM` or `YYYY-MM-DD`, each part a real calendar value (year 1 or later)."""
    m = _PARTIAL_DATE.fullmatch(value)
    if not m:
        return False
    year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


CUSTOM_FORMATS: Final[dict[str, Callable[[str], bool]]] = {
    "iso6346": is_iso6346,
    "imo-number": is_imo_number,
    "awb": is_awb,
    "unlocode": is_unlocode,
    "iso3166-alpha2": is_iso3166_alpha2,
    "hs-code": is_hs_code,
    "partial-date": is_partial_date,
    "cas": is_cas_number,
}


# --- Explanations ------------------------------------------------------------------------------
# What a person needs to fix a value a checker refused: the expected check digit, the shape. Used
# by the agency CLI; the API's messages stay "is not a valid <format>".

_SHAPES: Final[dict[str, str]] = {
    "iso6346": "4 letters (owner code, then U, J or Z), 6 digits and a check digit, "
    "e.g. CSQU3054383",
    "imo-number": "IMO and 7 digits, the last the check digit, e.g. IMO9074729",
    "awb": "a 3-digit airline prefix, then 8 digits, the last the check digit, e.g. 020-12345675",
    "unlocode": "a country code and 3 letters or digits 2-9, without the space, e.g. VNSGN",
    "iso3166-alpha2": "an ISO 3166-1 alpha-2 country code, e.g. VN",
    "hs-code": "6, 8 or 10 digits, e.g. 293299",
    "partial-date": "YYYY, YYYY-MM or YYYY-MM-DD, e.g. 2024-02",
    "cas": "a CAS Registry Number: 2-7 digits, 2 digits and a check digit, hyphenated, "
    "e.g. 103-79-7",
}


def _check_digit_hint(value: str) -> str | None:
    """The expected check digit and the corrected value, for a well-shaped number."""
    if _ISO6346.fullmatch(value):
        digit = iso6346_check_digit(value[:10])
        return f"check digit should be {digit} ({value[:10]}{digit})"
    if _IMO.fullmatch(value):
        digit = imo_check_digit(value[3:9])
        return f"check digit should be {digit} ({value[:9]}{digit})"
    if m := _AWB.fullmatch(value):
        digit = int(m[2]) % 7
        return f"check digit should be {digit} (serial {m[2]} mod 7: {value[:-1]}{digit})"
    return None


def explain(fmt: str, value: object) -> str | None:
    """Why `value` fails the custom format `fmt`, and what would pass; None when it passes, or
    when `fmt` is not one of `CUSTOM_FORMATS`.

    `explain("iso6346", "CSQU3054384")` -> "check digit should be 3 (CSQU3054383)".
    """
    check = CUSTOM_FORMATS.get(fmt)
    if check is None or not isinstance(value, str) or check(value):
        return None
    if value != value.upper() and check(value.upper()):
        return f"write it in capitals: {value.upper()}"
    if fmt in ("iso6346", "imo-number", "awb") and (hint := _check_digit_hint(value)):
        return hint
    if fmt == "cas" and (m := _CAS.fullmatch(value)):
        digit = cas_check_digit(m[1] + m[2])
        return f"check digit should be {digit} ({value[:-1]}{digit})"
    if fmt == "unlocode" and _UNLOCODE.fullmatch(value):
        return f"{value[:2]} is not an ISO 3166-1 country code"
    if fmt == "iso3166-alpha2" and _ALPHA2.fullmatch(value):
        return f"{value} is not an assigned ISO 3166-1 alpha-2 code"
    if fmt == "hs-code" and _HS.fullmatch(value):
        return f"chapter {value[:2]} is reserved: check the code"
    if fmt == "partial-date" and _PARTIAL_DATE.fullmatch(value):
        return f"{value} is not a calendar date"
    return f"expected {_SHAPES[fmt]}"
