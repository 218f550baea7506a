"""The Python vocabularies equal the schemas' enums, which stay normative."""

from __future__ import annotations

from typing import Any

import pytest

from broker import schemas
from broker.schemas import vocab


def _at(name: str, pointer: str) -> Any:
    node: Any = schemas.load(name)
    for part in pointer.strip("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.mark.parametrize(
    ("constant", "name", "pointer"),
    [
        (vocab.OFFENCES, "defs", "/$defs/offence/enum"),
        (vocab.SUBJECT_TYPES, "defs", "/$defs/subject-type/enum"),
        (vocab.PRIORITIES, "defs", "/$defs/priority/enum"),
        (vocab.TLP_ORDER, "defs", "/$defs/handling/enum"),
        (vocab.MESSAGE_KINDS, "defs", "/$defs/message-kind/enum"),
        (vocab.OUTCOMES, "defs", "/$defs/outcome/enum"),
        (vocab.COMMODITIES, "defs", "/$defs/commodity/enum"),
        (vocab.QUANTITY_BANDS, "defs", "/$defs/quantity-band/enum"),
        (vocab.ACK_STATUSES, "ack", "/properties/status/enum"),
        (vocab.ACK_REASONS, "ack", "/properties/reason/enum"),
        (vocab.LOG_KINDS, "log-leaf", "/properties/kind/enum"),
        (vocab.RECALL_REASONS, "recall", "/properties/reason/enum"),
        (vocab.COMPLIANCE_STATUSES, "recall-compliance", "/properties/status/enum"),
        (vocab.PERSON_ROLES, "body/subject", "/$defs/person/properties/roles/items/enum"),
    ],
)
def test_vocabulary_equals_schema_enum(constant: tuple[str, ...], name: str, pointer: str) -> None:
    assert list(constant) == _at(name, pointer)


def test_each_enum_is_written_once() -> None:
    """Vocabularies live in one place; schemas $ref them instead of repeating the list."""
    seen: dict[tuple[str, ...], str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "enum" in node:
                key = tuple(node["enum"])
                assert key not in seen, f"enum repeated at {where} and {seen[key]}"
                seen[key] = where
            for k, v in node.items():
                if k != "examples":
                    walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    for name in schemas.names():
        walk(schemas.load(name), name)


def test_tlp_comparison() -> None:
    assert vocab.tlp_rank("TLP:CLEAR") == 0
    assert vocab.tlp_rank("TLP:RED") == 4
    assert vocab.tlp_within("TLP:AMBER", "TLP:AMBER+STRICT")
    assert not vocab.tlp_within("TLP:RED", "TLP:AMBER+STRICT")
    with pytest.raises(KeyError):
        vocab.tlp_rank("AMBER")
