"""Alert and feedback bodies: every invalid field at once, labels, local refs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker import schemas

ALERT_ROUTING, FEEDBACK_ROUTING, _ = schemas.load("routing")["examples"]
ALERT_BODY = schemas.load("body/alert")["examples"][0]
FEEDBACK_BODY = schemas.load("body/feedback")["examples"][0]


def _errors(name: str, document: Any) -> list[tuple[str, str]]:
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate(name, document)
    return [(e.pointer, e.message) for e in caught.value.errors]


def test_every_invalid_field_of_a_bad_body_is_reported_at_once() -> None:
    bad = {
        "title": "",
        "summary": "Nguyen Van An seen at port",
        "subjects": [
            {
                "type": "shipment",
                "container_numbers": ["CSQU3054384", "CSQU3054383"],
                "hs_code": "29329",
                "port_of_loading": "QQABC",
                "vessel_imo": "IMO9074728",
                "air_waybill": "020-12345674",
            },
            {
                "type": "person",
                "names": [],
                "dates_of_birth": ["1987-02-30"],
                "nationalities": ["UK"],
                "roles": ["boss"],
                "nickname": "Big An",
            },
            {
                "type": "seizure",
                "date": "2024-07-28",
                "commodity": "wildlife",
                "quantity": {"value": 0, "unit": "tons"},
            },
            {"type": "spaceship"},
            {"type": "online_platform", "platform": "Example", "url": "ftp://market.example/x"},
        ],
        "language": "english!",
        "colour": "red",
    }
    errors = _errors("body/alert", bad)
    assert [pointer for pointer, _ in errors] == [
        "/colour",
        "/language",
        "/subjects/0/air_waybill",
        "/subjects/0/container_numbers/0",
        "/subjects/0/hs_code",  # pattern
        "/subjects/0/hs_code",  # format
        "/subjects/0/hs_edition",
        "/subjects/0/port_of_loading",
        "/subjects/0/vessel_imo",
        "/subjects/1/dates_of_birth/0",
        "/subjects/1/names",
        "/subjects/1/nationalities/0",
        "/subjects/1/nickname",
        "/subjects/1/roles/0",
        "/subjects/2/cites_appendix",
        "/subjects/2/quantity/unit",
        "/subjects/2/quantity/value",
        "/subjects/2/species",
        "/subjects/3/type",
        "/subjects/4/url",
        "/title",
    ]
    assert ("/subjects/0/hs_edition", "is required when hs_code is present") in errors
    assert ("/subjects/2/species", "is required") in errors
    assert ("/subjects/2/quantity/value", "must be > 0") in errors
    assert ("/title", "must have at least 1 character") in errors
    assert all("Nguyen" not in m and "Big An" not in m for _, m in errors)


def test_pointers_are_escaped_and_sorted_numerically() -> None:
    body = copy.deepcopy(ALERT_BODY)
    body["a/b~c"] = 1
    body["subjects"] = [body["subjects"][0]] * 11
    body["subjects"][10] = {"type": "route", "origin": {}}
    body["subjects"][2] = {"type": "route", "origin": {}}
    assert _errors("body/alert", body) == [
        ("/a~1b~0c", "is not allowed"),
        ("/subjects/2/origin", "must have at least 1 member"),
        ("/subjects/10/origin", "must have at least 1 member"),
    ]


def test_schema_error_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match=r"invalid v1/ack: \(root\): must be object"):
        schemas.validate("ack", [])


def test_each_subject_type_validates_on_its_own_branch() -> None:
    for subject in [
        {"type": "organisation", "name": "Example Trading Co", "country": "HK"},
        {"type": "conveyance", "kind": "aircraft", "flight_number": "VN414"},
        {"type": "route", "origin": {"country": "MZ"}, "destination": {"locode": "VNHPH"}},
        {"type": "seizure", "date": "2024-07-28", "commodity": "cash"},
    ]:
        schemas.validate("body/subject", subject)
    # A member of another branch is not allowed.
    assert _errors("body/subject", {"type": "organisation", "name": "X", "kind": "vessel"}) == [
        ("/kind", "is not allowed")
    ]
    assert _errors("body/subject", {"name": "X"}) == [("/type", "is required")]


def test_ack_reason_only_with_rejected() -> None:
    ack = copy.deepcopy(schemas.load("ack")["examples"][0])
    schemas.validate("ack", ack)
    assert _errors("ack", ack | {"reason": "other"}) == [("/reason", "is not allowed here")]
    assert _errors("ack", ack | {"status": "rejected"}) == [("/reason", "is required")]
    assert _errors("ack", ack | {"envelope_sha256": "A" * 43 + "="}) == [
        ("/envelope_sha256", "does not match ^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")
    ]


def test_log_leaf_is_open_but_integral() -> None:
    leaf = {"v": 1, "kind": "token.issued", "index": 3, "ts": 1, "details": {"n": [1, {"k": 2}]}}
    schemas.validate("log-leaf", leaf)
    assert _errors("log-leaf", leaf | {"details": {"n": [1, {"k": 2.5}]}}) == [
        ("/details/n/1/k", "must be string or integer or boolean or null or array or object")
    ]
    assert [p for p, _ in _errors("log-leaf", leaf | {"ts": 1.5, "kind": "msg.sent"})] == [
        "/kind",
        "/ts",
    ]


# --- validate_body: labels and local references ----------------------------------------------


def _body_errors(routing: dict[str, Any], body: Any) -> list[tuple[str, str]]:
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate_body(routing, body)
    return [(e.pointer, e.message) for e in caught.value.errors]


def test_subject_types_must_match_the_routing_label() -> None:
    routing = ALERT_ROUTING | {"subject_types": ["person", "shipment"]}
    assert _body_errors(routing, ALERT_BODY) == [
        (
            "/subjects",
            "subject types ['online_platform', 'person', 'shipment'] differ from routing "
            "subject_types ['person', 'shipment']",
        )
    ]


def test_local_refs_are_unique_and_resolve_to_conveyances() -> None:
    body = {
        "title": "Route via Hai Phong",
        "summary": "Ivory moved by sea then road.",
        "subjects": [
            {"type": "conveyance", "ref": "ship", "kind": "vessel", "imo": "IMO9074729"},
            {"type": "conveyance", "ref": "ship", "kind": "vehicle", "plate": "15C-12345"},
            {"type": "shipment", "ref": "box"},
            {"type": "route", "conveyances": ["ship", "box", "truck"]},
        ],
    }
    routing = ALERT_ROUTING | {"subject_types": ["conveyance", "route", "shipment"]}
    assert _body_errors(routing, body) == [
        ("/subjects/1/ref", "duplicates an earlier ref"),
        ("/subjects/3/conveyances/1", "names no conveyance in this body"),
        ("/subjects/3/conveyances/2", "names no conveyance in this body"),
    ]


def test_feedback_bodies_use_the_feedback_schema() -> None:
    schemas.validate_body(FEEDBACK_ROUTING, FEEDBACK_BODY)
    assert _body_errors(FEEDBACK_ROUTING, ALERT_BODY) == [
        ("/narrative", "is required"),
        ("/subjects", "is not allowed"),
        ("/summary", "is not allowed"),
        ("/title", "is not allowed"),
    ]
    assert [p for p, _ in _body_errors(ALERT_ROUTING, FEEDBACK_BODY)] == [
        "/narrative",
        "/seizures",
        "/subjects",
        "/summary",
        "/title",
    ]


def test_body_checks_tolerate_garbage() -> None:
    assert _body_errors(ALERT_ROUTING, {"subjects": "x"})
    assert _body_errors(ALERT_ROUTING, {"subjects": [1, {"type": 3}, {"ref": 5}]})
