"""CITES on shipments, persons and seizures; controlled substances with CAS numbers; incidents
(issue 21.2): the examples pass, each mistake is refused with the field named by its pointer."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker import schemas
from broker.schemas import formats, vocab
from broker.schemas.validation import FORMAT_CHECKER

SUBJECT_EXAMPLES = schemas.load("body/subject")["examples"]
IVORY = next(s for s in SUBJECT_EXAMPLES if s["type"] == "shipment" and "cites" in s)
PANGOLIN = next(s for s in SUBJECT_EXAMPLES if s["type"] == "seizure" and "cites_documents" in s)
PRECURSOR = next(s for s in SUBJECT_EXAMPLES if s["type"] == "incident")

PERMIT = {"kind": "export_permit", "number": "MZ/2024/EX-00417", "issuing_country": "MZ"}
P2P = {
    "name": "1-phenyl-2-propanone (P-2-P)",
    "cas": "103-79-7",
    "quantity": {"value": 500, "unit": "l"},
}


def _errors(document: Any, name: str = "body/subject") -> list[tuple[str, str]]:
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate(name, document)
    return [(e.pointer, e.message) for e in caught.value.errors]


def _with(subject: dict[str, Any], **members: Any) -> dict[str, Any]:
    return copy.deepcopy(subject) | members


# --- The examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", [IVORY, PANGOLIN, PRECURSOR], ids=lambda s: s["type"])
def test_examples_pass(subject: dict[str, Any]) -> None:
    schemas.validate("body/subject", subject)
    assert not list(schemas.validator("body/subject").iter_errors(subject))


def test_examples_are_the_requested_cases() -> None:
    assert IVORY["cites"][0]["species"] == "Loxodonta africana"
    assert IVORY["cites"][0]["appendix"] == "I"
    assert IVORY["cites"][0]["documents"][0]["kind"] == "export_permit"
    assert PANGOLIN["species"] in {"Manis javanica", "Smutsia temminckii"}
    assert PANGOLIN["cites_appendix"] == "I"
    assert PRECURSOR["incident_type"] == "stopped_shipment"
    assert PRECURSOR["substances"][0]["cas"] == "103-79-7"
    assert PRECURSOR["substances"][0]["quantity"] == {"value": 500, "unit": "l"}


def test_every_new_shape_validates() -> None:
    """Each new member, on each subject that carries it, in its fullest form."""
    everything = dict(P2P, incb_code="NC 012")
    cites = [{"species": "Manis javanica", "appendix": "I", "documents": [PERMIT]}]
    for subject in [
        _with(IVORY, substances=[everything]),
        {"type": "person", "names": [{"latin": "Tran Van Binh"}], "cites": cites},
        _with(PANGOLIN, substances=[{"name": "Ketamine", "cas": "6740-88-1"}]),
        {"type": "incident", "incident_type": "online_offer", "date": "2024-10-03"},
    ]:
        schemas.validate("body/subject", subject)
    for incident_type in (
        "seizure",
        "stopped_shipment",
        "suspicious_order",
        "suspicious_shipment",
        "clandestine_laboratory",
        "diversion_attempt",
        "online_offer",
    ):
        schemas.validate("body/subject", _with(PRECURSOR, incident_type=incident_type))


def test_seizures_in_feedback_carry_the_new_members() -> None:
    feedback = copy.deepcopy(schemas.load("body/feedback")["examples"][0])
    feedback["seizures"] = [PANGOLIN]
    schemas.validate("body/feedback", feedback)
    feedback["seizures"] = [_with(PANGOLIN, cites_appendix="IV")]
    assert [p for p, _ in _errors(feedback, "body/feedback")] == ["/seizures/0/cites_appendix"]


def test_existing_seizure_members_keep_their_meaning() -> None:
    """v1 is additive: the seizure's `species`, `cites_appendix` and `quantity` are unchanged."""
    seizure = schemas.load("body/subject")["$defs"]["seizure"]["properties"]
    assert seizure["quantity"]["properties"]["unit"]["enum"] == [
        "kg",
        "g",
        "l",
        "pieces",
        "heads",
        "sticks",
    ]
    legacy = next(s for s in SUBJECT_EXAMPLES if s["type"] == "seizure")
    schemas.validate("body/subject", legacy)
    assert _errors(_with(legacy, quantity={"value": 3, "unit": "tablets"})) == [
        ("/quantity/unit", 'must be one of: "kg", "g", "l", "pieces", "heads", "sticks"')
    ]
    assert _errors(_with(legacy, species="manis javanica")) == [
        ("/species", "does not match ^[A-Z][a-z]+( [a-z][a-z.-]*){0,3}$")
    ]


# --- Refusals, each named by its pointer ---------------------------------------------------------


def test_cites_appendix_iv_is_refused_everywhere() -> None:
    message = 'must be one of: "I", "II", "III"'
    ivory = copy.deepcopy(IVORY)
    ivory["cites"][0]["appendix"] = "IV"
    assert _errors(ivory) == [("/cites/0/appendix", message)]
    assert _errors(_with(PANGOLIN, cites_appendix="IV")) == [("/cites_appendix", message)]
    person = {
        "type": "person",
        "names": [{"latin": "Tran Van Binh"}],
        "cites": [{"species": "Manis javanica", "appendix": "IV"}],
    }
    assert _errors(person) == [("/cites/0/appendix", message)]


@pytest.mark.parametrize(
    ("cas", "message"),
    [
        ("103-79-8", "is not a valid cas"),  # check digit should be 7
        ("7664-93-8", "is not a valid cas"),  # should be 9
        ("10379-7", "does not match ^[1-9][0-9]{1,6}-[0-9]{2}-[0-9]$"),
        ("103-7-97", "does not match ^[1-9][0-9]{1,6}-[0-9]{2}-[0-9]$"),
        ("0103-79-7", "does not match ^[1-9][0-9]{1,6}-[0-9]{2}-[0-9]$"),
        ("12345678-90-1", "does not match ^[1-9][0-9]{1,6}-[0-9]{2}-[0-9]$"),
    ],
)
def test_malformed_cas_number_is_refused(cas: str, message: str) -> None:
    incident = copy.deepcopy(PRECURSOR)
    incident["substances"][0]["cas"] = cas
    errors = _errors(incident)
    assert ("/substances/0/cas", message) in errors
    assert {p for p, _ in errors} == {"/substances/0/cas"}
    assert all(cas not in m for _, m in errors)  # messages never echo the value


def test_unknown_unit_is_refused() -> None:
    incident = copy.deepcopy(PRECURSOR)
    incident["substances"][0]["quantity"]["unit"] = "bags"
    [(pointer, message)] = _errors(incident)
    assert pointer == "/substances/0/quantity/unit"
    assert message.startswith('must be one of: "kg", "g", "mg", "l", "ml", "pieces", "tablets"')
    shipment = _with(IVORY, substances=[dict(P2P, quantity={"value": 0, "unit": "bags"})])
    assert _errors(shipment) == [
        ("/substances/0/quantity/unit", message),
        ("/substances/0/quantity/value", "must be > 0"),
    ]


def test_cites_document_fields() -> None:
    bad = {"kind": "permit", "number": "mz 2024 1", "issuing_country": "UK"}
    shipment = _with(
        IVORY, cites=[{"species": "Loxodonta africana", "appendix": "I", "documents": [bad]}]
    )
    assert [p for p, _ in _errors(shipment)] == [
        "/cites/0/documents/0/issuing_country",
        "/cites/0/documents/0/kind",
        "/cites/0/documents/0/number",
    ]
    missing = _with(PANGOLIN, cites_documents=[{"kind": "other"}])
    assert _errors(missing) == [
        ("/cites_documents/0/issuing_country", "is required"),
        ("/cites_documents/0/number", "is required"),
    ]


def test_cites_entries_need_species_and_appendix() -> None:
    shipment = _with(IVORY, cites=[{"documents": [PERMIT]}])
    assert _errors(shipment) == [
        ("/cites/0/appendix", "is required"),
        ("/cites/0/species", "is required"),
    ]
    assert _errors(_with(IVORY, cites=[])) == [("/cites", "must have at least 1 item")]


def test_seizure_documents_need_the_species_they_cover() -> None:
    cash = {
        "type": "seizure",
        "date": "2024-09-12",
        "commodity": "cash",
        "cites_documents": [PERMIT],
    }
    assert _errors(cash) == [
        ("/cites_appendix", "is required when cites_documents is present"),
        ("/species", "is required when cites_documents is present"),
    ]


def test_incident_fields() -> None:
    assert _errors({"type": "incident"}) == [
        ("/date", "is required"),
        ("/incident_type", "is required"),
    ]
    bad = _with(PRECURSOR, incident_type="smuggling", date="2024-02-30", commodity="precursors")
    assert [p for p, _ in _errors(bad)] == ["/commodity", "/date", "/incident_type"]
    assert _errors(_with(PRECURSOR, substances=[{"cas": "103-79-7"}])) == [
        ("/substances/0/name", "is required")
    ]


# --- The format and the vocabulary ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("7664-93-9", True),  # sulfuric acid
        ("103-79-7", True),  # phenylacetone (P-2-P)
        ("90-82-4", True),  # pseudoephedrine
        ("108-24-7", True),  # acetic anhydride
        ("50-36-2", True),  # cocaine
        ("7732-18-5", True),  # water
        ("103-79-8", False),
        ("90-82-5", False),
        ("103 79 7", False),
        ("10379-7", False),
        ("103-79-", False),
        ("103-7-9", False),
        ("05-36-2", False),
        ("", False),
    ],
)
def test_cas_format(value: str, ok: bool) -> None:
    assert formats.is_cas_number(value) is ok
    assert FORMAT_CHECKER.conforms(value, "cas") is ok


def test_cas_explanations() -> None:
    assert formats.cas_check_digit("10379") == 7
    assert formats.explain("cas", "103-79-7") is None
    assert formats.explain("cas", "103-79-8") == "check digit should be 7 (103-79-7)"
    assert (formats.explain("cas", "103797") or "").startswith("expected a CAS Registry Number")
    # A well-shaped CAS number in another identifier's field gets that field's hint.
    assert (formats.explain("awb", "103-79-8") or "").startswith("expected a 3-digit")


def test_incident_is_a_subject_type_everywhere() -> None:
    assert "incident" in vocab.SUBJECT_TYPES
    assert "incident" in schemas.load("defs")["$defs"]["subject-type"]["enum"]
    routing = copy.deepcopy(schemas.load("routing")["examples"][0])
    routing["subject_types"] = ["incident"]
    schemas.validate_routing(routing)
    body = {
        "title": "P-2-P stopped at Busan",
        "summary": "Stopped before loading.",
        "subjects": [PRECURSOR],
    }
    schemas.validate_body(routing, body)
    routing["subject_types"] = ["seizure"]
    with pytest.raises(schemas.SchemaError) as caught:
        schemas.validate_body(routing, body)
    assert [e.pointer for e in caught.value.errors] == ["/subjects"]
