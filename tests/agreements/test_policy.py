"""`decide(policy, routing, now)` without I/O: the world's agreements rule by rule, then properties.

The unit tests use the world of ARCHITECTURE.md section 2 (broker/fixtures/world.json) as the
registry would hand it to `decide`; the property tests build random agreements, operations and
routing headers from the controlled vocabularies (every in-scope document is schema-valid).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker import schemas
from broker.agreements.policy import CODES, Accept, Decision, Designation, Policy, Reject, decide
from broker.agreements.service import policy_hash
from broker.schemas.vocab import OFFENCES, PRIORITIES, SUBJECT_TYPES, TLP_ORDER
from broker.world import demo_world

WORLD = demo_world()
AGREEMENTS = {a["id"]: a for a in WORLD["agreements"]}
OPERATIONS = {o["id"]: o for o in WORLD["operations"]}
FOCAL_POINTS = {f["id"]: f for f in WORLD["focal_points"]}
AGENCIES = tuple(sorted(a["id"] for a in WORLD["agencies"]))
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # inside MEKONG-DRAGON-V, after TWIN-GUARDIAN-II
IN_TWIN_GUARDIAN = datetime(2024, 8, 15, 12, tzinfo=UTC)
MID = "019ab0a2-6a1e-7c3b-9d2e-5b8f4a1c2d3e"
Edit = Callable[[dict[str, Any]], None]


# --- the world, as the registry hands it to decide ------------------------------------------


def routing(fp: str = "VN-GDC/fp-hcm-01", **overrides: Any) -> dict[str, Any]:
    """A v1 routing header (schema-valid unless the overrides make it otherwise)."""
    iat = int(NOW.timestamp())
    value: dict[str, Any] = {
        "v": 1,
        "kind": "alert",
        "mid": MID,
        "iat": iat,
        "exp": iat + 86400,
        "sender": fp.split("/")[0],
        "sender_fp": fp,
        "recipients": ["HK-CED"],
        "agreement": "VN-HK-CMAA-2013",
        "operation": None,
        "offence": "cites_wildlife",
        "subject_types": ["route", "shipment"],
        "priority": "urgent",
        "handling": "TLP:AMBER",
    }
    value.update(overrides)
    return value


def world_policy(
    header: dict[str, Any],
    *,
    agreement: Edit | None = None,
    operation: Edit | None = None,
    fp_active: bool = True,
) -> Policy:
    """What `policy_for` gathers for `header` from the demo world, after optional edits."""
    ag = copy.deepcopy(AGREEMENTS.get(header["agreement"]))
    op = copy.deepcopy(OPERATIONS.get(header["operation"])) if header["operation"] else None
    if ag is not None and agreement is not None:
        agreement(ag)
    if op is not None and operation is not None:
        operation(op)
    fp = FOCAL_POINTS.get(header["sender_fp"], {"designations": []})
    return Policy(
        agreement=ag,
        agreement_sha256=policy_hash(ag) if ag else "",
        operation=op,
        operation_sha256=policy_hash(op) if op else "",
        designations=[
            Designation(
                date.fromisoformat(d["valid_from"]),
                date.fromisoformat(d["valid_until"]) if d["valid_until"] else None,
            )
            for d in fp["designations"]
            if d["agreement"] == header["agreement"]
        ],
        focal_point_active=fp_active,
    )


def world_decide(
    header: dict[str, Any],
    now: datetime = NOW,
    *,
    agreement: Edit | None = None,
    operation: Edit | None = None,
    fp_active: bool = True,
) -> Decision:
    schemas.validate_routing(header)
    policy = world_policy(header, agreement=agreement, operation=operation, fp_active=fp_active)
    return decide(policy, header, now)


def code(decision: Decision) -> str:
    return "accept" if isinstance(decision, Accept) else decision.code


def _set(**values: Any) -> Edit:
    return lambda doc: doc.update(values)


def _without_member(agency: str) -> Edit:
    return lambda doc: doc.update(members=[m for m in doc["members"] if m != agency])


NZ_TO_VN = {
    "recipients": ["VN-MPS"],
    "agreement": "VN-NZ-TNC-2019",
    "offence": "narcotics",
    "subject_types": ["person"],
}
TWIN_GUARDIAN = {
    "recipients": ["KR-KCS"],
    "agreement": "VN-KR-CUSTOMS",
    "operation": "TWIN-GUARDIAN-II",
    "offence": "nps",
    "subject_types": ["online_platform", "person", "shipment"],
}
MEKONG = {
    "recipients": ["CN-GACC", "HK-CED", "KR-KCS"],
    "agreement": "MEKONG-DRAGON",
    "operation": "MEKONG-DRAGON-V",
    "offence": "narcotics",
    "subject_types": ["conveyance", "person"],
}
MEKONG_PARTNERS = sorted(p for p in AGREEMENTS["MEKONG-DRAGON"]["parties"] if p != "VN-GDC")
ASSURANCE = {
    "from": "NZ-POL",
    "to": "VN-MPS",
    "offence": "narcotics",
    "reference": "Diplomatic note 2026/17",
    "recorded_at": "2026-03-02",
}


# --- every exchange of the world that should pass --------------------------------------------


@pytest.mark.parametrize(
    ("header", "now"),
    [
        pytest.param(routing(), NOW, id="customs-vn-hk-wildlife"),
        pytest.param(routing(recipients=["VN-GDC"], fp="HK-CED/fp-01"), NOW, id="customs-hk-vn"),
        pytest.param(
            routing("VN-MPS/fp-01", **{**NZ_TO_VN, "recipients": ["NZ-POL"]}),
            NOW,
            id="police-vn-nz-narcotics-has-no-exclusion",
        ),
        pytest.param(
            routing("NZ-POL/fp-01", **{**NZ_TO_VN, "offence": "money_laundering"}),
            NOW,
            id="police-nz-vn-money-laundering",
        ),
        pytest.param(
            routing(
                "VN-SPP/fp-01",
                recipients=["MZ-PGR"],
                agreement="VN-MZ-WILDLIFE-2017",
                subject_types=["organisation", "person"],
            ),
            NOW,
            id="prosecutors-vn-mz",
        ),
        pytest.param(routing(**TWIN_GUARDIAN), IN_TWIN_GUARDIAN, id="twin-guardian-in-window"),
        pytest.param(
            routing("VN-GDC/fp-hn-01", **TWIN_GUARDIAN),
            IN_TWIN_GUARDIAN,
            id="twin-guardian-from-the-hanoi-desk",
        ),
        pytest.param(routing(**MEKONG), NOW, id="mekong-dragon-three-members"),
        pytest.param(
            routing(**{**MEKONG, "recipients": MEKONG_PARTNERS}),
            NOW,
            id="mekong-dragon-all-26-partners",
        ),
        pytest.param(
            routing(**{**MEKONG, "recipients": MEKONG_PARTNERS, "audience": "members"}),
            NOW,
            id="mekong-dragon-addressed-to-the-members",
        ),
        pytest.param(
            routing(handling="TLP:AMBER+STRICT"), NOW, id="handling-at-the-agreement-maximum"
        ),
    ],
)
def test_exchanges_inside_the_world_are_accepted(header: dict[str, Any], now: datetime) -> None:
    decision = world_decide(header, now)
    assert decision == Accept(world_policy(header).sha256)


# --- one case per rule, in the order decide checks them --------------------------------------


@dataclass(frozen=True)
class Case:
    code: str
    header: dict[str, Any]
    now: datetime = NOW
    agreement: Edit | None = None
    operation: Edit | None = None
    fp_active: bool = True


RULES = {
    "unknown-agreement": Case(
        "scope.agreement_unknown", routing(agreement="VN-FR-NOTHING", recipients=["HK-CED"])
    ),
    "agreement-suspended": Case(
        "scope.agreement_suspended", routing(), agreement=_set(status="suspended")
    ),
    "agreement-not-yet-in-force": Case(
        "scope.agreement_not_in_force", routing(), agreement=_set(valid_from="2026-03-03")
    ),
    "agreement-expired": Case(
        "scope.agreement_not_in_force", routing(), agreement=_set(valid_until="2026-03-01")
    ),
    # Issue 15.7: a non-party hears what it would for an agreement that does not exist.
    "sender-not-party": Case(
        "scope.agreement_unknown",
        routing(**{**NZ_TO_VN, "recipients": ["NZ-POL"], "offence": "money_laundering"}),
    ),
    "mekong-dragon-alert-to-a-non-member": Case(
        "scope.recipient_not_party", routing(**{**MEKONG, "recipients": ["HK-CED", "NZ-POL"]})
    ),
    "focal-point-suspended": Case("scope.focal_point_inactive", routing(), fp_active=False),
    "focal-point-designated-under-another-agreement": Case(
        "scope.focal_point_not_designated", routing("VN-GDC/fp-hn-01")
    ),
    "offence-not-covered": Case("scope.offence_not_covered", routing(offence="cybercrime")),
    "subject-type-not-covered": Case(
        "scope.subject_type_not_covered", routing(subject_types=["online_platform", "route"])
    ),
    "operation-unknown": Case("scope.operation_unknown", routing(operation="NO-SUCH-OPERATION")),
    "operation-of-another-agreement": Case(
        "scope.operation_other_agreement",
        routing(**{**TWIN_GUARDIAN, "operation": "MEKONG-DRAGON-V", "offence": "narcotics"}),
    ),
    "operation-suspended": Case(
        "scope.operation_suspended", routing(**MEKONG), operation=_set(status="suspended")
    ),
    "twin-guardian-after-its-window": Case(
        "scope.operation_outside_window", routing(**TWIN_GUARDIAN)
    ),
    "operation-member-left": Case(
        "scope.operation_not_member", routing(**MEKONG), operation=_without_member("CN-GACC")
    ),
    "operation-sender-not-member": Case(
        "scope.operation_not_member", routing(**MEKONG), operation=_without_member("VN-GDC")
    ),
    "death-penalty-direction": Case(
        "scope.direction_excluded", routing("NZ-POL/fp-01", **NZ_TO_VN)
    ),
    "handling-above-agreement": Case("scope.handling_above_agreement", routing(handling="TLP:RED")),
    "rilo-sends-under-mekong-dragon": Case(
        "scope.sender_receive_only",
        routing("INT-WCO-RILOAP/fp-analyst-01", **{**MEKONG, "recipients": ["VN-GDC"]}),
    ),
    "addressed-to-the-members-but-one-left-out": Case(
        "scope.audience_incomplete",
        routing(**{**MEKONG, "recipients": MEKONG_PARTNERS[1:], "audience": "members"}),
    ),
    "red-to-two-recipients": Case(
        "scope.red_multilateral",
        routing(**{**MEKONG, "recipients": ["CN-GACC", "HK-CED"], "handling": "TLP:RED"}),
        agreement=_set(max_handling="TLP:RED"),
    ),
}


@pytest.mark.parametrize("case", RULES.values(), ids=RULES.keys())
def test_each_rule_refuses_with_its_code(case: Case) -> None:
    decision = world_decide(
        case.header,
        case.now,
        agreement=case.agreement,
        operation=case.operation,
        fp_active=case.fp_active,
    )
    assert isinstance(decision, Reject)
    assert decision.code == case.code
    assert decision.detail
    policy = world_policy(
        case.header, agreement=case.agreement, operation=case.operation, fp_active=case.fp_active
    )
    assert decision.policy_sha256 == policy.sha256


def test_the_rule_table_covers_every_code() -> None:
    assert {case.code for case in RULES.values()} == set(CODES)
    assert len(CODES) == len(set(CODES))


def test_the_first_broken_rule_wins() -> None:
    # Excluded direction and RED above the maximum: the direction rule comes first.
    header = routing("NZ-POL/fp-01", **{**NZ_TO_VN, "handling": "TLP:RED"})
    assert code(world_decide(header)) == "scope.direction_excluded"
    # Twin Guardian after its window, about a subject type outside the agreement: the
    # agreement's subject types are checked before the operation.
    header = routing(**{**TWIN_GUARDIAN, "subject_types": ["conveyance"]})
    assert code(world_decide(header)) == "scope.subject_type_not_covered"
    # A suspended agreement hides everything else.
    header = routing("VN-GDC/fp-hn-01", offence="cybercrime", handling="TLP:RED")
    assert code(world_decide(header, agreement=_set(status="suspended"))) == (
        "scope.agreement_suspended"
    )
    # Several recipients outside the agreement: the first in sorted order is named.
    header = routing(**{**MEKONG, "recipients": ["AU-ABF", "NZ-POL", "VN-MPS"]})
    decision = world_decide(header)
    assert isinstance(decision, Reject)
    assert "NZ-POL" in decision.detail


# --- the death-penalty direction rule --------------------------------------------------------


def _assure(**changes: Any) -> Edit:
    return lambda doc: doc["assurances"].append({**ASSURANCE, **changes})


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(None, "scope.direction_excluded", id="no-assurance"),
        pytest.param(_assure(), "accept", id="assurance-recorded-today"),
        pytest.param(_assure(recorded_at="2020-01-01"), "accept", id="assurance-recorded-earlier"),
        pytest.param(
            _assure(recorded_at="2026-03-03"), "scope.direction_excluded", id="assurance-tomorrow"
        ),
        pytest.param(
            _assure(offence="money_laundering"),
            "scope.direction_excluded",
            id="assurance-for-another-offence",
        ),
        pytest.param(
            _assure(**{"from": "VN-MPS", "to": "NZ-POL"}),
            "scope.direction_excluded",
            id="assurance-for-the-other-direction",
        ),
        pytest.param(
            lambda doc: (_assure()(doc), doc["exclusions"][0].update(unless_assurance=False)),
            "scope.direction_excluded",
            id="exclusion-that-no-assurance-lifts",
        ),
    ],
)
def test_nz_to_vn_narcotics_needs_a_recorded_assurance(edit: Edit | None, expected: str) -> None:
    assert code(world_decide(routing("NZ-POL/fp-01", **NZ_TO_VN), agreement=edit)) == expected


def test_the_exclusion_is_per_direction() -> None:
    back = routing("VN-MPS/fp-01", **{**NZ_TO_VN, "recipients": ["NZ-POL"]})
    assert code(world_decide(back)) == "accept"
    for offence in AGREEMENTS["VN-NZ-TNC-2019"]["offences"]:
        forth = routing("NZ-POL/fp-01", **{**NZ_TO_VN, "offence": offence})
        expected = "scope.direction_excluded" if offence == "narcotics" else "accept"
        assert code(world_decide(forth)) == expected, offence


# --- edges of time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=UTC), "scope.operation_outside_window"),
        (datetime(2024, 7, 1, tzinfo=UTC), "accept"),
        (datetime(2024, 8, 31, 23, 59, 59, 999999, tzinfo=UTC), "accept"),
        (datetime(2024, 9, 1, tzinfo=UTC), "scope.operation_outside_window"),
        # Local times are converted: 2024-07-01 08:00 in Seoul is still June 30 in UTC.
        (
            datetime(2024, 7, 1, 8, tzinfo=timezone(timedelta(hours=9))),
            "scope.operation_outside_window",
        ),
        (datetime(2024, 7, 1, 9, tzinfo=timezone(timedelta(hours=9))), "accept"),
    ],
    ids=str,
)
def test_twin_guardian_window_edges(now: datetime, expected: str) -> None:
    assert code(world_decide(routing(**TWIN_GUARDIAN), now)) == expected


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set(valid_from="2026-03-02"), "accept"),
        (_set(valid_from="2026-03-03"), "scope.agreement_not_in_force"),
        (_set(valid_until="2026-03-02"), "accept"),
        (_set(valid_until="2026-03-01"), "scope.agreement_not_in_force"),
    ],
    ids=["starts-today", "starts-tomorrow", "ends-today", "ended-yesterday"],
)
def test_agreement_validity_is_by_whole_days(edit: Edit, expected: str) -> None:
    assert code(world_decide(routing(), agreement=edit)) == expected


@pytest.mark.parametrize(
    ("designations", "expected"),
    [
        ([], "scope.focal_point_not_designated"),
        ([Designation(date(2026, 3, 2), None)], "accept"),
        ([Designation(date(2026, 3, 3), None)], "scope.focal_point_not_designated"),
        ([Designation(date(2023, 1, 1), date(2026, 3, 2))], "accept"),
        ([Designation(date(2023, 1, 1), date(2026, 3, 1))], "scope.focal_point_not_designated"),
        (
            [Designation(date(2023, 1, 1), date(2024, 1, 1)), Designation(date(2026, 1, 1), None)],
            "accept",
        ),
    ],
    ids=["none", "from-today", "from-tomorrow", "until-today", "until-yesterday", "second-period"],
)
def test_designation_periods(designations: list[Designation], expected: str) -> None:
    header = routing()
    policy = dataclasses.replace(world_policy(header), designations=designations)
    assert code(decide(policy, header, NOW)) == expected


# --- handling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("handling", TLP_ORDER)
def test_handling_up_to_the_agreement_maximum(handling: str) -> None:
    # VN-HK-CMAA-2013 allows up to TLP:AMBER+STRICT.
    expected = "scope.handling_above_agreement" if handling == "TLP:RED" else "accept"
    assert code(world_decide(routing(handling=handling))) == expected


def test_red_goes_to_one_recipient_only() -> None:
    red = _set(max_handling="TLP:RED")
    one = routing(**{**MEKONG, "recipients": ["HK-CED"], "handling": "TLP:RED"})
    two = routing(**{**MEKONG, "recipients": ["CN-GACC", "HK-CED"], "handling": "TLP:RED"})
    assert code(world_decide(one, agreement=red)) == "accept"
    assert code(world_decide(two, agreement=red)) == "scope.red_multilateral"
    # Under the agreement as signed (up to TLP:AMBER), RED is refused whatever the count.
    assert code(world_decide(two)) == "scope.handling_above_agreement"


# --- purity ------------------------------------------------------------------------------------


def test_decide_neither_mutates_nor_depends_on_anything_but_its_arguments() -> None:
    header = routing("NZ-POL/fp-01", **NZ_TO_VN)
    policy = world_policy(header, agreement=_assure())
    before = (copy.deepcopy(dict(policy.agreement or {})), copy.deepcopy(header))
    first = decide(policy, header, NOW)
    again = decide(policy, header, NOW)
    assert first == again == Accept(policy.sha256)
    assert (dict(policy.agreement or {}), header) == before


# === properties ===================================================================================

BASE = datetime(2026, 6, 15, 12, tzinfo=UTC)
YEAR_S = 366 * 86400


@dataclass(frozen=True)
class Scenario:
    """An agreement, an optional operation, a focal point's standing, a routing header, a time."""

    agreement: dict[str, Any] | None
    operation: dict[str, Any] | None
    designations: tuple[Designation, ...]
    fp_active: bool
    header: dict[str, Any]
    now: datetime
    faults: frozenset[str] = frozenset()

    def policy(self) -> Policy:
        return Policy(
            agreement=self.agreement,
            agreement_sha256=policy_hash(self.agreement) if self.agreement else "",
            operation=self.operation,
            operation_sha256=policy_hash(self.operation) if self.operation else "",
            designations=self.designations,
            focal_point_active=self.fp_active,
        )

    def decide(self) -> Decision:
        return decide(self.policy(), self.header, self.now)

    def edit_agreement(self, edit: Edit) -> Scenario:
        assert self.agreement is not None
        doc = copy.deepcopy(self.agreement)
        edit(doc)
        return dataclasses.replace(self, agreement=doc)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=4096)
def _subsets(
    pool: tuple[str, ...], min_size: int, max_size: int | None
) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(pool), min_size=min_size, max_size=max_size, unique=True).map(
        sorted
    )


def _subset(
    draw: st.DrawFn,
    pool: tuple[str, ...] | list[str],
    min_size: int = 0,
    max_size: int | None = None,
) -> list[str]:
    """A sorted subset of `pool` (strategies built once per pool: generation stays cheap)."""
    return draw(_subsets(tuple(sorted(pool)), min_size, max_size))


DAYS = st.integers(0, 4000).map(lambda n: timedelta(days=n))
SECONDS = st.integers(0, YEAR_S).map(lambda s: timedelta(seconds=s))


# The rules a scenario can break, named after their codes and in the order decide checks them.
FAULTS = tuple(c.removeprefix("scope.") for c in CODES)
FAULT_SETS = st.sets(st.sampled_from(FAULTS), min_size=1, max_size=3).map(frozenset)
KINDS = (
    "customs_mutual_assistance",
    "police_cooperation",
    "prosecutors_mou",
    "multilateral_operation_frame",
)


@st.composite
def scenarios(draw: st.DrawFn, faults: st.SearchStrategy[frozenset[str]] | None = None) -> Scenario:
    """An exchange inside every rule of a random agreement, then with the rules in `faults`
    broken (by default: none half of the time, else one to three at random).

    Without faults the documents and the header are schema-valid. A fault is only ever moot
    when an earlier rule is broken too, so `decide` must name the earliest fault."""
    if faults is None:
        faults = st.just(frozenset[str]()) | FAULT_SETS
    broken = draw(faults).__contains__

    now = BASE + timedelta(seconds=draw(st.integers(-2 * YEAR_S, 2 * YEAR_S)))
    today = now.date()
    parties = _subset(draw, AGENCIES, min_size=3 if broken("red_multilateral") else 2, max_size=8)
    outsiders = tuple(a for a in AGENCIES if a not in parties)

    # Who sends to whom. An agreement unknown to the sender: none, or one it is not party to.
    outsider = broken("agreement_unknown") and bool(outsiders) and draw(st.booleans())
    sender = draw(st.sampled_from(outsiders if outsider else parties))
    others = [p for p in parties if p != sender]
    recipients = _subset(draw, others, min_size=2 if broken("red_multilateral") else 1)
    if broken("recipient_not_party"):
        recipients = sorted({*recipients, draw(st.sampled_from(outsiders))})
    # What about.
    offence = draw(st.sampled_from(OFFENCES))
    offences = {*_subset(draw, OFFENCES), offence}
    if broken("offence_not_covered"):
        offences = (offences - {offence}) or {o for o in OFFENCES if o != offence}
    subject_types = _subset(draw, SUBJECT_TYPES, min_size=1)
    allowed = {*_subset(draw, SUBJECT_TYPES), *subject_types}
    if broken("subject_type_not_covered"):
        allowed.discard(draw(st.sampled_from(subject_types)))
        allowed = allowed or {t for t in SUBJECT_TYPES if t not in subject_types}
    # When.
    if not broken("agreement_not_in_force"):
        valid_from = today - draw(DAYS)
        valid_until = draw(st.none() | DAYS.map(today.__add__))
    elif draw(st.booleans()):
        valid_from, valid_until = today + timedelta(days=1) + draw(DAYS), None
    else:
        valid_from, valid_until = today - timedelta(days=4001), today - timedelta(days=1)
    # Exclusions, lifted for the directions this header uses (by assurance or by offence).
    exclusions = [
        {
            "from": draw(st.sampled_from(parties)),
            "to": draw(st.sampled_from(parties)),
            "offences": _subset(draw, OFFENCES, min_size=1),
            "reason": "a legal reason",
            "unless_assurance": draw(st.booleans()),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    assurances = [
        {
            "from": draw(st.sampled_from(parties)),
            "to": draw(st.sampled_from(parties)),
            "offence": draw(st.sampled_from(OFFENCES)),
            "reference": "note verbale",
            "recorded_at": str(today + timedelta(days=draw(st.integers(-4000, 30)))),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    for exclusion in exclusions:
        if (
            exclusion["from"] == sender
            and exclusion["to"] in recipients
            and offence in exclusion["offences"]
        ):
            if len(exclusion["offences"]) > 1 and draw(st.booleans()):
                exclusion["offences"].remove(offence)
            else:
                exclusion["unless_assurance"] = True
                assurances.append(
                    {
                        "from": sender,
                        "to": exclusion["to"],
                        "offence": offence,
                        "reference": "note verbale",
                        "recorded_at": str(today - draw(DAYS)),
                    }
                )
    if broken("direction_excluded"):
        exclusions.append(
            {
                "from": sender,
                "to": draw(st.sampled_from(recipients)),
                "offences": [offence],
                "reason": "no assistance",
                "unless_assurance": draw(st.booleans()),
            }
        )
        # No assurance lifts it: not even one recorded tomorrow.
        assurances = [
            {**a, "recorded_at": str(today + timedelta(days=1))}
            if (a["from"], a["offence"]) == (sender, offence)
            else a
            for a in assurances
        ]
    # How it may be handled.
    if broken("handling_above_agreement"):
        max_handling = draw(st.sampled_from(TLP_ORDER[:-1]))
        handling = draw(st.sampled_from(TLP_ORDER[TLP_ORDER.index(max_handling) + 1 :]))
    elif broken("red_multilateral"):
        max_handling = handling = "TLP:RED"
    else:
        max_handling = draw(st.sampled_from(TLP_ORDER))
        top = TLP_ORDER.index(max_handling)
        labels = [t for t in TLP_ORDER[: top + 1] if t != "TLP:RED" or len(recipients) == 1]
        handling = draw(st.sampled_from(labels))

    agreement_id = draw(st.sampled_from(["AG-ONE", "VN-XX-2026", "MULTI-FRAME-7"]))
    agreement: dict[str, Any] | None = {
        "id": agreement_id,
        "title": "A random agreement",
        "kind": draw(st.sampled_from(KINDS)),
        "parties": parties,
        "offences": sorted(offences),
        "subject_types": sorted(allowed),
        "valid_from": str(valid_from),
        "valid_until": str(valid_until) if valid_until else None,
        "status": "suspended" if broken("agreement_suspended") else "active",
        "exclusions": exclusions,
        "assurances": assurances,
        "max_handling": max_handling,
        "onward_sharing": draw(st.sampled_from(["forbidden", "originator_consent"])),
        "retention": "P5Y",
        "ack_deadline": "PT24H",
        # Receive-only parties: the sender, when that rule is broken; else none or recipients.
        "receive_only": [sender]
        if broken("sender_receive_only")
        else _subset(draw, recipients, max_size=2),
    }
    if broken("agreement_unknown") and not outsider:
        agreement = None

    # An operation, perhaps (always, when a fault is about the operation).
    operation: dict[str, Any] | None = None
    operation_id = None
    audience = broken("audience_incomplete") or draw(st.booleans())
    about_operation = [f for f in FAULTS if f.startswith("operation_") or f.startswith("audience")]
    if any(broken(f) for f in about_operation) or draw(st.booleans()):
        operation_id = "OP-" + draw(st.sampled_from(["ALPHA", "BRAVO", "CHARLIE"]))
        if not broken("operation_outside_window"):
            starts, ends = now - draw(SECONDS), now + timedelta(seconds=1) + draw(SECONDS)
        elif draw(st.booleans()):
            starts, ends = now + timedelta(seconds=1) + draw(SECONDS), now + timedelta(days=800)
        else:
            starts, ends = now - timedelta(days=800), now - draw(SECONDS)
        # Addressed to the members: exactly the recipients and the sender, or one more.
        members = {sender, *recipients, *([] if audience else _subset(draw, parties))}
        if broken("audience_incomplete"):
            members.add(draw(st.sampled_from([a for a in AGENCIES if a not in members])))
        if broken("operation_not_member"):
            members.discard(draw(st.sampled_from([sender, *recipients])))
        operation = {
            "id": operation_id,
            "agreement": "OTHER-AGREEMENT" if broken("operation_other_agreement") else agreement_id,
            "title": "A random operation",
            "starts_at": _stamp(starts),
            "ends_at": _stamp(ends),
            "members": sorted(members),
            "status": "suspended" if broken("operation_suspended") else "active",
        }
        if broken("operation_unknown"):
            # Not in the registry, or the registry answered with another operation.
            operation = None if draw(st.booleans()) else {**operation, "id": "OP-OTHER"}

    # The sending focal point's standing: past and future periods, and one for today.
    designations = [
        Designation(today + timedelta(days=a), today + timedelta(days=a + n) if n >= 0 else None)
        for a, n in draw(
            st.lists(st.tuples(st.integers(-4000, 400), st.integers(-1, 4000)), max_size=2)
        )
    ]
    if broken("focal_point_not_designated"):
        designations = [d for d in designations if not d.covers(today)]
    else:
        designations.append(
            Designation(today - draw(DAYS), draw(st.none() | DAYS.map(today.__add__)))
        )

    iat = int(now.timestamp())
    header = {
        "v": 1,
        "kind": "alert",
        "mid": MID,
        "iat": iat,
        "exp": iat + 7 * 86400,
        "sender": sender,
        "sender_fp": f"{sender}/fp-01",
        "recipients": recipients,
        "agreement": agreement_id,
        "operation": operation_id,
        "offence": offence,
        "subject_types": subject_types,
        "priority": draw(st.sampled_from(PRIORITIES)),
        "handling": handling,
    }
    if operation_id is not None and audience:
        header["audience"] = "members"
    return Scenario(
        agreement=agreement,
        operation=operation,
        designations=tuple(draw(st.permutations(designations))),
        fp_active=not broken("focal_point_inactive"),
        header=header,
        now=now,
        faults=frozenset(f for f in FAULTS if broken(f)),
    )


ANY = scenarios()
IN_SCOPE = scenarios(st.just(frozenset()))
WITH_AGREEMENT = ANY.filter(lambda sc: sc.agreement is not None)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(IN_SCOPE)
def test_an_exchange_inside_every_rule_is_accepted(sc: Scenario) -> None:
    assert sc.agreement is not None
    schemas.validate("agreement", sc.agreement)
    if sc.operation is not None:
        schemas.validate("operation", sc.operation)
    schemas.validate_routing(sc.header)
    assert sc.decide() == Accept(sc.policy().sha256)


@pytest.mark.parametrize("fault", FAULTS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_breaking_one_rule_gives_its_code(fault: str, data: st.DataObject) -> None:
    sc = data.draw(scenarios(st.just(frozenset({fault}))))
    decision = sc.decide()
    assert isinstance(decision, Reject)
    assert decision.code == f"scope.{fault}"


@PROPERTY
@given(scenarios(FAULT_SETS))
def test_the_first_broken_rule_is_reported(sc: Scenario) -> None:
    first = min(sc.faults, key=FAULTS.index)
    event(first)
    assert code(sc.decide()) == f"scope.{first}"


@PROPERTY
@given(ANY)
def test_every_refusal_has_a_known_code_and_names_the_policy(sc: Scenario) -> None:
    decision = sc.decide()
    event(code(decision))
    assert decision.policy_sha256 == sc.policy().sha256
    if isinstance(decision, Reject):
        assert decision.code in CODES
        assert decision.detail
        assert decision.accepted is False
    else:
        assert decision.accepted is True


def _widenings(sc: Scenario, data: st.DataObject) -> dict[str, Scenario]:
    """The same exchange under an agreement (or operation, or standing) that allows more."""
    assert sc.agreement is not None
    ag = sc.agreement
    party = data.draw(st.sampled_from([a for a in AGENCIES if a not in ag["parties"]]))
    offence = data.draw(st.sampled_from(OFFENCES))
    subject_type = data.draw(st.sampled_from(SUBJECT_TYPES))
    wider = {
        "party": sc.edit_agreement(lambda d: d.update(parties=sorted({*d["parties"], party}))),
        "offence": sc.edit_agreement(
            lambda d: d.update(offences=sorted({*d["offences"], offence}))
        ),
        "subject-type": sc.edit_agreement(
            lambda d: d.update(subject_types=sorted({*d["subject_types"], subject_type}))
        ),
        "all-three": sc.edit_agreement(
            lambda d: d.update(
                parties=sorted({*d["parties"], party}),
                offences=sorted({*d["offences"], offence}),
                subject_types=sorted({*d["subject_types"], subject_type}),
            )
        ),
        "assurance": sc.edit_agreement(
            lambda d: d["assurances"].append(
                {
                    "from": data.draw(st.sampled_from(d["parties"])),
                    "to": data.draw(st.sampled_from(d["parties"])),
                    "offence": offence,
                    "reference": "note verbale",
                    "recorded_at": str(sc.now.date() - timedelta(days=1)),
                }
            )
        ),
        "designation": dataclasses.replace(
            sc, designations=(*sc.designations, Designation(date(2000, 1, 1), None))
        ),
    }
    # A member added to an operation is not a widening for an alert addressed to all members:
    # it leaves that member out, which `scope.audience_incomplete` refuses by design.
    if sc.operation is not None and "audience" not in sc.header:
        members = sorted({*sc.operation["members"], party})
        wider["operation-member"] = dataclasses.replace(
            sc, operation={**sc.operation, "members": members}
        )
    return wider


@PROPERTY
@given(WITH_AGREEMENT, st.data())
def test_widening_the_agreement_never_turns_an_accept_into_a_reject(
    sc: Scenario, data: st.DataObject
) -> None:
    before = sc.decide()
    event(code(before))
    for what, wider in _widenings(sc, data).items():
        after = wider.decide()
        if isinstance(before, Accept):
            assert isinstance(after, Accept), (what, after)
        elif isinstance(after, Reject):
            # Each rule only gets easier to satisfy, so the first broken one can only move on.
            assert CODES.index(after.code) >= CODES.index(before.code), (what, before, after)


@PROPERTY
@given(ANY, st.data())
def test_the_order_of_recipients_does_not_matter(sc: Scenario, data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(sc.header["recipients"]))
    other = dataclasses.replace(sc, header={**sc.header, "recipients": shuffled})
    # The whole decision, detail included: decide names the first recipient in sorted order.
    assert other.decide() == sc.decide()


@PROPERTY
@given(WITH_AGREEMENT, st.data())
def test_the_order_of_any_list_in_the_documents_does_not_matter(
    sc: Scenario, data: st.DataObject
) -> None:
    def shuffle(values: list[Any]) -> list[Any]:
        return list(data.draw(st.permutations(values)))

    other = sc.edit_agreement(
        lambda d: d.update(
            parties=shuffle(d["parties"]),
            offences=shuffle(d["offences"]),
            subject_types=shuffle(d["subject_types"]),
            exclusions=shuffle(d["exclusions"]),
            assurances=shuffle(d["assurances"]),
        )
    )
    if other.operation is not None:
        other = dataclasses.replace(
            other, operation={**other.operation, "members": shuffle(other.operation["members"])}
        )
    other = dataclasses.replace(
        other,
        header={**other.header, "subject_types": shuffle(other.header["subject_types"])},
        designations=tuple(shuffle(list(other.designations))),
    )
    # The documents' hashes differ (their bytes do), the decision does not.
    assert code(other.decide()) == code(sc.decide())


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@PROPERTY
@given(WITH_AGREEMENT, st.data())
def test_the_policy_hash_follows_the_agreement_and_the_operation(
    sc: Scenario, data: st.DataObject
) -> None:
    assert sc.agreement is not None
    title = data.draw(st.text(min_size=1, max_size=20).filter(lambda t: t != sc.agreement["title"]))
    status = "suspended" if sc.agreement["status"] == "active" else "active"
    changes = [
        sc.edit_agreement(lambda d: d.update(title=title)),
        sc.edit_agreement(lambda d: d.update(status=status)),
        sc.edit_agreement(lambda d: d["assurances"].append(ASSURANCE)),
    ]
    if sc.operation is None:
        changes.append(dataclasses.replace(sc, operation=OPERATIONS["MEKONG-DRAGON-V"]))
    else:
        ends = data.draw(st.sampled_from(["2030-01-01T00:00:00Z", "2031-06-30T12:00:00Z"]))
        changes.append(dataclasses.replace(sc, operation={**sc.operation, "ends_at": ends}))
    policy = sc.policy()
    assert sc.decide().policy_sha256 == policy.sha256
    # Deterministic: the same documents give the same hash.
    assert dataclasses.replace(sc).policy().sha256 == policy.sha256
    for changed in changes:
        assert changed.policy().sha256 != policy.sha256
        assert changed.decide().policy_sha256 == changed.policy().sha256


@PROPERTY
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_the_policy_hash_tells_the_agreement_from_the_operation(a: bytes, b: bytes) -> None:
    ag, op = _b64u(a), _b64u(b)
    one = Policy(agreement=None, agreement_sha256=ag, operation_sha256=op).sha256
    assert Policy(agreement=None, agreement_sha256=ag, operation_sha256=op).sha256 == one
    assert Policy(agreement=None, agreement_sha256=ag).sha256 != one
    assert Policy(agreement=None, operation_sha256=op).sha256 != one
    if a != b:
        assert Policy(agreement=None, agreement_sha256=op, operation_sha256=ag).sha256 != one
    assert len(one) == 43
