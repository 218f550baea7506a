"""Custom formats: check digits and code lists, alone and through the schemas."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import schemas
from broker.schemas import formats
from broker.schemas.validation import FORMAT_CHECKER

CASES: dict[str, tuple[list[str], list[str]]] = {
    "cas": (
        ["7664-93-9", "103-79-7", "90-82-4", "108-24-7", "50-36-2"],
        ["103-79-8", "10379-7", "0103-79-7", "103-79-77", "103 79 7", "12345678-90-1", ""],
    ),
    "iso6346": (
        ["CSQU3054383", "MSKU9070323", "MAEU1234567", "CSQU0000070"],
        [
            "CSQU3054384",  # wrong check digit
            "MSKU9070320",
            "csqu3054383",  # lower case
            "CSQX3054383",  # category must be U, J or Z
            "CSQU305438",  # too short
            "CSQU30543833",
            "CSQU 305438 3",
            "CSQ03054383",
        ],
    ),
    "imo-number": (
        ["IMO9074729", "IMO9321483"],
        ["IMO9074728", "IMO 9074729", "9074729", "IMO907472", "imo9074729", "IMO90747290"],
    ),
    "awb": (
        ["020-12345675", "02012345675", "176-00000000", "618-99999992"],
        ["020-12345674", "020-1234567", "02-012345675", "020_12345675", "020-1234567A", ""],
    ),
    "unlocode": (
        ["VNSGN", "HKHKG", "KRPUS", "KRINC", "CNSHA", "XKPRN", "XZAAA", "USNY2"],
        ["QQABC", "UKLON", "VNSG1", "vnsgn", "VNSGNX", "VN SGN", "VNSG", "VN-SGN"],
    ),
    "iso3166-alpha2": (
        ["VN", "HK", "KR", "NZ", "MZ", "CN", "GB", "XK"],
        ["UK", "EU", "QQ", "ZZ", "XZ", "vn", "VNM", "V", ""],
    ),
    "hs-code": (
        ["293299", "29329900", "2932990010", "010121", "121190"],
        ["29329", "2932990", "293299001", "29329900123", "000000", "770000", "2932.99", "29 32 99"],
    ),
    "partial-date": (
        ["1987", "1987-03", "1987-03-14", "1988-02-29", "0001"],
        ["1987-02-29", "1987-02-30", "1987-13", "1987-00", "1987-1", "87", "0000", "1987-03-14T00"],
    ),
}
PARAMS = [
    pytest.param(fmt, value, ok, id=f"{fmt}:{value or 'empty'}:{'ok' if ok else 'bad'}")
    for fmt, (good, bad) in CASES.items()
    for ok, values in ((True, good), (False, bad))
    for value in values
]


@pytest.mark.parametrize(("fmt", "value", "ok"), PARAMS)
def test_format(fmt: str, value: str, ok: bool) -> None:
    assert formats.CUSTOM_FORMATS[fmt](value) is ok
    assert FORMAT_CHECKER.conforms(value, fmt) is ok


def test_every_custom_format_is_tested_and_used() -> None:
    assert set(CASES) == set(formats.CUSTOM_FORMATS)
    used = {
        fmt
        for name in schemas.names()
        for fmt in formats.CUSTOM_FORMATS
        if f'"format": "{fmt}"' in str(schemas.load(name)).replace("'", '"')
    }
    assert used == set(formats.CUSTOM_FORMATS)


def test_formats_ignore_non_strings() -> None:
    assert all(FORMAT_CHECKER.conforms(12, fmt) for fmt in formats.CUSTOM_FORMATS)


def test_known_check_digits() -> None:
    assert formats.iso6346_check_digit("CSQU305438") == 3
    assert formats.imo_check_digit("907472") == 9


def test_formats_through_a_schema() -> None:
    shipment = {
        "type": "shipment",
        "container_numbers": ["CSQU3054383", "CSQU3054384"],
        "vessel_imo": "IMO9074728",
        "air_waybill": "020-12345674",
        "hs_code": "770000",
        "hs_edition": "HS2022",
        "port_of_loading": "QQABC",
        "departure_date": "2024-02-30",
    }
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate("body/subject", shipment)
    assert [(e.pointer, e.message) for e in caught.value.errors] == [
        ("/air_waybill", "is not a valid awb"),
        ("/container_numbers/1", "is not a valid iso6346"),
        ("/departure_date", "is not a valid date"),
        ("/hs_code", "is not a valid hs-code"),
        ("/port_of_loading", "is not a valid unlocode"),
        ("/vessel_imo", "is not a valid imo-number"),
    ]


# --- ISO 6346 property tests -----------------------------------------------------------------

OWNERS = st.text(string.ascii_uppercase, min_size=3, max_size=3)
CATEGORIES = st.sampled_from("UJZ")
SERIALS = st.text(string.digits, min_size=6, max_size=6)


def _remainder(first10: str) -> int:
    value = formats._LETTER_VALUE
    return sum((value[c] if c.isalpha() else int(c)) << i for i, c in enumerate(first10)) % 11


@given(OWNERS, CATEGORIES, SERIALS)
def test_iso6346_accepts_every_valid_number(owner: str, category: str, serial: str) -> None:
    first10 = owner + category + serial
    number = first10 + str(formats.iso6346_check_digit(first10))
    assert formats.is_iso6346(number)
    assert not any(formats.is_iso6346(first10 + d) for d in string.digits if d != number[-1]), (
        "exactly one check digit is valid"
    )


@given(
    OWNERS,
    CATEGORIES,
    SERIALS,
    st.integers(min_value=4, max_value=9),
    st.sampled_from(string.digits + string.ascii_uppercase),
)
def test_iso6346_rejects_a_single_character_change_in_the_serial(
    owner: str, category: str, serial: str, position: int, replacement: str
) -> None:
    first10 = owner + category + serial
    number = first10 + str(formats.iso6346_check_digit(first10))
    if number[position] == replacement:
        return
    changed = number[:position] + replacement + number[position + 1 :]
    if replacement.isalpha():
        assert not formats.is_iso6346(changed)
        return
    # A digit change moves the weighted sum by a non-multiple of 11, so the remainder always
    # changes; the check digit stays the same only when the remainders are 10 and 0, both
    # written 0 (the ISO 6346 rule). That is the one blind spot, and it is exact:
    blind_spot = {_remainder(number[:10]), _remainder(changed[:10])} == {0, 10}
    assert formats.is_iso6346(changed) is blind_spot


def test_iso6346_blind_spot_example() -> None:
    """Remainder 10 is written 0, so these two differ in one serial digit yet both pass."""
    assert formats.is_iso6346("CSQU0000070")
    assert formats.is_iso6346("CSQU9000070")
