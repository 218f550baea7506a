"""Numbers from requests and partners' headers: ASCII digits only."""

from __future__ import annotations

import pytest

from broker.ids import whole_number


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("42", 42), ("9" * 18, 10**18 - 1), ("9" * 19, None), ("", None), ("²", None),
     ("٣", None), ("-1", None), (" 1", None), ("1.5", None), ("1e3", None)],
)  # fmt: skip
def test_whole_number_takes_ascii_digits_only(value: str, expected: int | None) -> None:
    assert whole_number(value) == expected
