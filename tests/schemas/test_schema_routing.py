"""validate_routing: the broker's view of a message, schema plus cross-field rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker import schemas

ALERT, FEEDBACK, MULTI = schemas.load("routing")["examples"]


def _errors(routing: Any) -> list[tuple[str, str]]:
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate_routing(routing)
    assert caught.value.schema == "v1/routing"
    return [(e.pointer, e.message) for e in caught.value.errors]


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    routing = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            routing.pop(key, None)
        else:
            routing[key] = value
    return routing


def test_operation_is_present_and_nullable() -> None:
    schemas.validate_routing(_with(ALERT, operation=None))
    assert _errors(_with(ALERT, operation=...)) == [("/operation", "is required")]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"recipients": ["KR-KCS", "HK-CED"]}, [("/recipients", "must be sorted")]),
        ({"recipients": ["KR-KCS", "VN-GDC"]}, [("/recipients/1", "must not be the sender")]),
        ({"recipients": []}, [("/recipients", "must have at least 1 item")]),
        (
            {"recipients": ["HK-CED", "HK-CED"]},
            [("/recipients", "must not contain duplicates")],
        ),
        (
            {"recipients": [f"AA-{i:03d}" for i in range(65)]},
            [("/recipients", "must have at most 64 items")],
        ),
        (
            {"subject_types": ["shipment", "person"]},
            [("/subject_types", "must be sorted")],
        ),
        ({"subject_types": []}, [("/subject_types", "must have at least 1 item")]),
        ({"sender_fp": "HK-CED/fp-01"}, [("/sender_fp", "must be a focal point of the sender")]),
        ({"exp": 1721800800}, [("/exp", "must be later than iat")]),
        ({"iat": 1721800800.0}, [("/iat", "must be integer")]),
        ({"v": True}, [("/v", "must be 1")]),
        ({"v": 2}, [("/v", "must be 1")]),
        ({"mid": "0190E353-3700-7A1C-9D2E-5B8F4A1C2D3E"}, None),
        (
            {"sender": "vn-gdc"},
            [
                ("/sender", "does not match ^(?:[A-Z]{2}|INT)-[A-Z0-9]{2,10}(?:-[A-Z0-9]{2,10})?$"),
                ("/sender_fp", "must be a focal point of the sender"),
            ],
        ),
        ({"agreement": "vn-kr"}, None),
        ({"operation": ""}, None),
        ({"offence": "murder"}, None),
        ({"priority": "flash"}, None),
        ({"handling": "AMBER"}, None),
        ({"note": "free text is not allowed"}, [("/note", "is not allowed")]),
        ({"handling": ...}, [("/handling", "is required")]),
        (
            {"outcome": "seized", "in_reply_to": ALERT["mid"]},
            [("/in_reply_to", "is not allowed here"), ("/outcome", "is not allowed here")],
        ),
    ],
)
def test_alert_rules(changes: dict[str, Any], expected: list[tuple[str, str]] | None) -> None:
    errors = _errors(_with(ALERT, **changes))
    if expected is None:  # one field, whatever the wording
        assert {pointer for pointer, _ in errors} == {f"/{next(iter(changes))}"}
    else:
        assert errors == expected


def test_feedback_rules() -> None:
    schemas.validate_routing(_with(FEEDBACK, commodity=..., quantity_band=...))
    assert _errors(_with(FEEDBACK, in_reply_to=..., outcome=...)) == [
        ("/in_reply_to", "is required"),
        ("/outcome", "is required"),
    ]
    assert [p for p, _ in _errors(_with(FEEDBACK, outcome="found"))] == ["/outcome"]


def test_every_problem_at_once() -> None:
    routing = _with(
        MULTI,
        recipients=["VN-GDC", "KR-KCS", "HK-CED"],
        subject_types=["shipment", "conveyance"],
        sender_fp="HK-CED/fp-01",
        iat=1768435200,
        extra=1,
        kind=...,
        outcome="seized",
    )
    assert _errors(routing) == [
        ("/exp", "must be later than iat"),
        ("/extra", "is not allowed"),
        ("/kind", "is required"),
        ("/outcome", "is not allowed here"),
        ("/recipients", "must be sorted"),
        ("/recipients/0", "must not be the sender"),
        ("/sender_fp", "must be a focal point of the sender"),
        ("/subject_types", "must be sorted"),
    ]


@pytest.mark.parametrize("routing", [None, [], "routing", 1, {}])
def test_not_even_an_object(routing: Any) -> None:
    assert _errors(routing)


def test_messages_never_echo_values() -> None:
    secret = "Nguyen Van An, passport C1234567"
    routing = {key: secret for key in ALERT} | {"free": secret}
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate_routing(routing)
    assert len(caught.value.errors) >= len(ALERT)
    assert secret not in str(caught.value)
    assert all(secret not in e.message for e in caught.value.errors)
