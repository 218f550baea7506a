"""Scope as a pure function: `decide(policy, routing, now)` has no I/O.

The broker checks an exchange against the agreement version in force without reading the
content: parties, designation of the sending focal point, offence and subject types, the
operation's window and membership, per-direction exclusions, and handling limits. Every refusal
has a stable `scope.*` code; every decision names the policy hash it applied, so an auditor can
re-derive it from the log.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from broker.schemas.vocab import TLP_ORDER


@dataclass(frozen=True, slots=True)
class Designation:
    valid_from: date
    valid_until: date | None

    def covers(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_until is None or day <= self.valid_until)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the registry says about one exchange: the documents in force, by hash."""

    agreement: Mapping[str, Any] | None
    agreement_sha256: str = ""
    operation: Mapping[str, Any] | None = None
    operation_sha256: str = ""
    designations: Sequence[Designation] = ()
    focal_point_active: bool = True

    @property
    def sha256(self) -> str:
        """The hash recorded with the decision: agreement version and operation version."""
        text = f"{self.agreement_sha256}:{self.operation_sha256}"
        digest = hashlib.sha256(text.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Accept:
    policy_sha256: str
    accepted: bool = field(default=True, init=False)


@dataclass(frozen=True, slots=True)
class Reject:
    code: str
    detail: str
    policy_sha256: str
    accepted: bool = field(default=False, init=False)


Decision = Accept | Reject
# Codes, in the order the rules are checked.
CODES = (
    "scope.agreement_unknown",
    "scope.agreement_suspended",
    "scope.agreement_not_in_force",
    "scope.sender_receive_only",
    "scope.recipient_not_party",
    "scope.focal_point_inactive",
    "scope.focal_point_not_designated",
    "scope.offence_not_covered",
    "scope.subject_type_not_covered",
    "scope.operation_unknown",
    "scope.operation_other_agreement",
    "scope.operation_suspended",
    "scope.operation_outside_window",
    "scope.operation_not_member",
    "scope.audience_incomplete",
    "scope.direction_excluded",
    "scope.handling_above_agreement",
    "scope.red_multilateral",
)


def _day(value: str) -> date:
    return date.fromisoformat(value)


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def assured(
    agreement: Mapping[str, Any], sender: str, recipient: str, offence: str, day: date
) -> bool:
    """Whether an assurance recorded by `day` lifts an `unless_assurance` exclusion of
    `offence` from `sender` to `recipient`."""
    return any(
        a["from"] == sender
        and a["to"] == recipient
        and a["offence"] == offence
        and _day(a["recorded_at"]) <= day
        for a in agreement.get("assurances", ())
    )


def decide(policy: Policy, routing: Mapping[str, Any], now: datetime) -> Decision:
    """Accept, or the first rule the exchange breaks (recipients are checked in sorted order)."""
    digest = policy.sha256

    def reject(code: str, detail: str) -> Reject:
        return Reject(code, detail, digest)

    ag = policy.agreement
    agreement_id = routing["agreement"]
    sender = routing["sender"]
    # Membership first, and a non-party hears what it would for an agreement that does not
    # exist: nothing about an agreement (existence, status, dates) reaches a non-party.
    if ag is None or sender not in ag["parties"]:
        return reject(
            "scope.agreement_unknown", f"{sender} is a party to no agreement {agreement_id!r}"
        )
    if ag["status"] != "active":
        return reject("scope.agreement_suspended", f"{agreement_id} is suspended")
    today = now.astimezone(UTC).date()
    until = ag.get("valid_until")
    if today < _day(ag["valid_from"]) or (until is not None and today > _day(until)):
        return reject("scope.agreement_not_in_force", f"{agreement_id} is not in force on {today}")
    if sender in ag.get("receive_only", ()):
        return reject(
            "scope.sender_receive_only",
            f"{sender} receives exchanges under {agreement_id} but originates none",
        )
    parties = set(ag["parties"])
    recipients = sorted(routing["recipients"])
    for recipient in recipients:
        if recipient not in parties:
            return reject(
                "scope.recipient_not_party", f"{recipient} is not a party to {agreement_id}"
            )
    if not policy.focal_point_active:
        return reject("scope.focal_point_inactive", f"{routing['sender_fp']} is suspended")
    if not any(d.covers(today) for d in policy.designations):
        return reject(
            "scope.focal_point_not_designated",
            f"{routing['sender_fp']} is not designated under {agreement_id} on {today}",
        )
    offence = routing["offence"]
    if offence not in ag["offences"]:
        return reject("scope.offence_not_covered", f"{offence} is not covered by {agreement_id}")
    allowed = set(ag["subject_types"])
    for kind in sorted(routing["subject_types"]):
        if kind not in allowed:
            return reject(
                "scope.subject_type_not_covered",
                f"subject type {kind} is not covered by {agreement_id}",
            )
    operation_id = routing.get("operation")
    if operation_id is not None:
        op = policy.operation
        if op is None or op["id"] != operation_id:
            return reject("scope.operation_unknown", f"no operation {operation_id!r}")
        if op["agreement"] != agreement_id:
            return reject(
                "scope.operation_other_agreement", f"{operation_id} belongs to {op['agreement']}"
            )
        if op["status"] != "active":
            return reject("scope.operation_suspended", f"{operation_id} is suspended")
        if not _instant(op["starts_at"]) <= now < _instant(op["ends_at"]):
            return reject(
                "scope.operation_outside_window",
                f"{operation_id} runs from {op['starts_at']} to {op['ends_at']}",
            )
        members = set(op["members"])
        for agency in [sender, *recipients]:
            if agency not in members:
                return reject(
                    "scope.operation_not_member", f"{agency} is not a member of {operation_id}"
                )
        # Addressed to the members: all of them now, so none is left out by an old list.
        missing = sorted(members - {sender} - set(recipients))
        if routing.get("audience") == "members" and missing:
            return reject(
                "scope.audience_incomplete",
                f"addressed to the members of {operation_id}, but not to {', '.join(missing)}",
            )
    for recipient in recipients:
        for exclusion in ag.get("exclusions", ()):
            if (
                exclusion["from"] != sender
                or exclusion["to"] != recipient
                or offence not in exclusion["offences"]
            ):
                continue
            if exclusion.get("unless_assurance") and assured(ag, sender, recipient, offence, today):
                continue
            return reject(
                "scope.direction_excluded",
                f"{sender} to {recipient}: {offence} is excluded ({exclusion['reason']})",
            )
    handling = routing["handling"]
    if TLP_ORDER.index(handling) > TLP_ORDER.index(ag["max_handling"]):
        return reject(
            "scope.handling_above_agreement",
            f"{handling} is above {agreement_id}'s {ag['max_handling']}",
        )
    if handling == "TLP:RED" and len(recipients) > 1:
        return reject("scope.red_multilateral", "TLP:RED may go to one recipient only")
    return Accept(digest)
