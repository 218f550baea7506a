"""Controlled vocabularies of the v1 contract, as Python constants.

The JSON Schema files are normative; these constants mirror their enums for Python code
(the broker's scope checks, the SDK, the CLI). `tests/schemas/test_vocab.py` fails if the two
ever differ, so change both together, and only in a new schema version once published.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Offence = Literal[
    "narcotics",
    "precursors",
    "nps",
    "cites_wildlife",
    "tobacco",
    "ipr",
    "customs_other",
    "transnational_organised_crime",
    "human_trafficking",
    "money_laundering",
    "cybercrime",
]
SubjectType = Literal[
    "person",
    "organisation",
    "shipment",
    "route",
    "conveyance",
    "seizure",
    "online_platform",
    "incident",
]
Priority = Literal["routine", "priority", "urgent"]
Handling = Literal["TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED"]
MessageKind = Literal["alert", "feedback"]
RecallReason = Literal[
    "sent_in_error", "wrong_recipient", "inaccurate", "legal_order", "erasure_request"
]
# Reasons that name the originator's legal reference.
RECALL_NEEDS_REFERENCE: Final = frozenset({"legal_order", "erasure_request"})
ComplianceStatus = Literal["erased", "retained"]
Outcome = Literal[
    "seized",
    "arrest",
    "controlled_delivery",
    "no_find",
    "false_positive",
    "under_investigation",
]
Commodity = Literal[
    "narcotics",
    "precursors",
    "nps",
    "wildlife",
    "tobacco",
    "counterfeit_goods",
    "cash",
    "other",
]
QuantityBand = Literal["lt_1kg", "1_10kg", "10_100kg", "100_1000kg", "gt_1000kg", "n_a"]
AckStatus = Literal["received", "decrypted", "rejected"]
AckReason = Literal[
    "bad_signature",
    "key_not_valid",
    "log_proof_failed",
    "not_addressed_to_us",
    "decrypt_failed",
    "inner_mismatch",
    "replay",
    "invalid_body",
    "label_mismatch",
    "other",
]
LogKind = Literal[
    "msg.accepted",
    "msg.rejected",
    "msg.delivered",
    "msg.fetched",
    "msg.acked",
    "msg.disputed",
    "msg.expired",
    "msg.purged",
    "msg.recalled",
    "msg.recall_complied",
    "hold.placed",
    "hold.lifted",
    "key.registered",
    "key.retired",
    "key.revoked",
    "directory.published",
    "agreement.updated",
    "agreement.proposed",
    "agreement.approved",
    "agreement.proposal_expired",
    "agreement.restricted",
    "operation.updated",
    "log.key_rotated",
    "token.issued",
    "token.revoked",
    "admin.changed",
    "audit.queried",
    "audit.exported",
    "audit.summarised",
    "agency.created",
    "focal_point.created",
    "designation.changed",
    "log.cosigned",
    "agency.suspended",
    "agency.reactivated",
    "focal_point.suspended",
    "focal_point.reactivated",
    "principal.disabled",
    "principal.enabled",
]
PersonRole = Literal[
    "consignor",
    "consignee",
    "courier",
    "organiser",
    "financier",
    "driver",
    "captain",
    "seller",
    "buyer",
    "other",
]

OFFENCES: Final[tuple[Offence, ...]] = get_args(Offence)
SUBJECT_TYPES: Final[tuple[SubjectType, ...]] = get_args(SubjectType)
PRIORITIES: Final[tuple[Priority, ...]] = get_args(Priority)
# Traffic Light Protocol 2.0 labels, least to most restrictive: compare with `tlp_rank`.
TLP_ORDER: Final[tuple[Handling, ...]] = get_args(Handling)
MESSAGE_KINDS: Final[tuple[MessageKind, ...]] = get_args(MessageKind)
RECALL_REASONS: Final[tuple[RecallReason, ...]] = get_args(RecallReason)
COMPLIANCE_STATUSES: Final[tuple[ComplianceStatus, ...]] = get_args(ComplianceStatus)
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
COMMODITIES: Final[tuple[Commodity, ...]] = get_args(Commodity)
QUANTITY_BANDS: Final[tuple[QuantityBand, ...]] = get_args(QuantityBand)
ACK_STATUSES: Final[tuple[AckStatus, ...]] = get_args(AckStatus)
ACK_REASONS: Final[tuple[AckReason, ...]] = get_args(AckReason)
LOG_KINDS: Final[tuple[LogKind, ...]] = get_args(LogKind)
PERSON_ROLES: Final[tuple[PersonRole, ...]] = get_args(PersonRole)

_TLP_RANK: Final[dict[str, int]] = {label: rank for rank, label in enumerate(TLP_ORDER)}


def tlp_rank(label: str) -> int:
    """0 for TLP:CLEAR up to 4 for TLP:RED; `KeyError` for anything else."""
    return _TLP_RANK[label]


def tlp_within(label: str, ceiling: str) -> bool:
    """Whether `label` is no more restrictive than `ceiling` (an agreement's `max_handling`)."""
    return tlp_rank(label) <= tlp_rank(ceiling)
