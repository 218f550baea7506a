"""An agency's registrar does its own agency's paperwork over the API, end to end: a new
officer's desk, key, designation and token, the officer's first alert, a suspension and the
refusal that follows, and the end of the designation; and nothing of another agency's.

The operator's administrator keeps agencies, agreements and operations; a registrar is refused
those by its role (403 `auth.forbidden`) and another agency's objects by its binding (403
`auth.foreign_agency`; every route: tests/hostile/test_registrar_bola.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from broker.crypto.keys import SigningKey
from tests.conftest import bearer
from tests.foundation.test_lifecycle_of_participants import code, events
from tests.messages.conftest import Exchange
from tests.messages.conftest import exchange as exchange  # the HTTP harness
from tests.sdk.conftest import agency_side as agency_side  # a live broker and a keystore

NEW_FP = "VN-GDC/fp-lc-07"
REASON = {"reason": "officer on leave"}


def test_a_registrar_onboards_an_officer_who_then_sends(exchange: Exchange, token_for: Any) -> None:
    client = exchange.client
    registrar = bearer(token_for("registrar", agency_id="VN-GDC"))

    def admin(method: str, path: str, body: Any = None) -> Any:
        return client.request(method, f"/v1/admin{path}", json=body, headers=registrar)

    desk = admin(
        "POST",
        "/agencies/VN-GDC/focal-points",
        {"id": NEW_FP, "name": "Lao Cai border desk", "role": "customs liaison officer"},
    )
    assert desk.status_code == 201, desk.text
    signing = SigningKey.generate()
    key = admin(
        "POST",
        "/keys",
        {"agency_id": "VN-GDC", "focal_point_id": NEW_FP, "jwk": signing.public.jwk},
    )
    assert key.status_code == 201, key.text
    today = str(datetime.now(UTC).date())
    designated = admin(
        "POST",
        f"/focal-points/{NEW_FP}/designations",
        {"agreement": "VN-HK-CMAA-2013", "valid_from": today},
    )
    assert designated.status_code == 201, designated.text
    minted = admin(
        "POST",
        "/principals",
        {"name": "vn-gdc-fp-lc-07", "role": "focal_point", "focal_point_id": NEW_FP},
    )
    assert minted.status_code == 201, minted.text
    exchange.signing[NEW_FP] = signing
    exchange.tokens[NEW_FP] = minted.json()["token"]

    sent, _, _ = exchange.send(fp=NEW_FP)
    assert sent.status_code == 201, sent.text

    # The registrar's own listings show its agency's only.
    principals = admin("GET", "/principals").json()
    assert principals
    assert {p["agency_id"] for p in principals} == {"VN-GDC"}
    assert {fp["agency_id"] for fp in admin("GET", "/focal-points").json()} == {"VN-GDC"}
    assert {k["agency_id"] for k in admin("GET", "/keys").json()} == {"VN-GDC"}

    suspended = admin("POST", f"/focal-points/{NEW_FP}/suspend", REASON)
    assert suspended.status_code == 200, suspended.text
    refused, _, _ = exchange.send(fp=NEW_FP)
    assert (refused.status_code, code(refused)) == (403, "auth.principal_suspended")
    back = admin("POST", f"/focal-points/{NEW_FP}/reactivate", REASON)
    assert back.status_code == 200, back.text

    ended = admin(
        "POST",
        f"/focal-points/{NEW_FP}/designations/VN-HK-CMAA-2013/end",
        {"valid_until": today, "reason": "reassigned"},
    )
    assert ended.status_code == 200, ended.text

    # Every change is on the log, under the registrar's name.
    actors = {
        kind: [d for _, d in events(kind)]
        for kind in ("focal_point.created", "key.registered", "designation.changed")
    }
    assert all(actors.values()), actors
    assert [s for s, _ in events("focal_point.suspended")] == [NEW_FP]


def test_a_registrar_is_refused_what_is_the_operator_s(exchange: Exchange, token_for: Any) -> None:
    client = exchange.client
    registrar = bearer(token_for("registrar", agency_id="VN-GDC"))
    for method, path, body in (
        ("POST", "/v1/admin/agencies", {}),
        ("GET", "/v1/admin/agencies", None),
        ("POST", "/v1/admin/agencies/VN-GDC/suspend", REASON),
        ("POST", "/v1/admin/agreements", {}),
        ("POST", "/v1/admin/operations", {}),
        ("POST", "/v1/admin/world", {}),
    ):
        response = client.request(method, path, json=body, headers=registrar)
        assert (response.status_code, code(response)) == (403, "auth.forbidden"), path


def test_a_registrar_designates_only_under_its_agency_s_agreements(
    exchange: Exchange, token_for: Any, world: dict[str, Any]
) -> None:
    outside = next(a["id"] for a in world["agreements"] if "VN-GDC" not in a["parties"])
    registrar = bearer(token_for("registrar", agency_id="VN-GDC"))
    response = exchange.client.post(
        "/v1/admin/focal-points/VN-GDC/fp-hcm-01/designations",
        json={"agreement": outside, "valid_from": str(datetime.now(UTC).date())},
        headers=registrar,
    )
    assert (response.status_code, code(response)) == (422, "registry.not_a_party")


# --- `broker registrar ...` against a live broker ---------------------------------------------


def test_the_registrar_command_line_keeps_the_agency_s_desks_and_principals(
    agency_side: dict[str, Any], token_for: Any
) -> None:
    from broker.cli.main import app

    runner = agency_side["runner"]
    own = token_for("registrar", agency_id="VN-GDC")

    def cli(*args: str, token: str = own) -> Any:
        return runner.invoke(app, ["registrar", *args, "--token", token])

    suspended = cli("focal-point", "suspend", "VN-GDC/fp-hn-01", "--reason", "on leave", "--json")
    assert suspended.exit_code == 0, suspended.output
    assert json.loads(suspended.stdout)["status"] == "suspended"
    back = cli("focal-point", "reactivate", "VN-GDC/fp-hn-01", "--reason", "back", "--json")
    assert json.loads(back.stdout)["status"] == "active"
    today = str(datetime.now(UTC).date())
    designated = cli(
        "focal-point", "designate", "VN-GDC/fp-hn-01", "VN-HK-CMAA-2013", "--from", today,
        "--json",
    )  # fmt: skip
    assert designated.exit_code == 0, designated.output
    assert json.loads(designated.stdout)["agreement_id"] == "VN-HK-CMAA-2013"
    ended = cli(
        "focal-point", "end-designation", "VN-GDC/fp-hn-01", "VN-KR-CUSTOMS",
        "--until", today, "--reason", "reassigned", "--json",
    )  # fmt: skip
    assert ended.exit_code == 0, ended.output
    assert json.loads(ended.stdout)["valid_until"] == today

    made = cli(
        "principal", "create", "vn-gdc-fp-hn-01", "--focal-point", "VN-GDC/fp-hn-01", "--json"
    )
    assert made.exit_code == 0, made.output
    first = json.loads(made.stdout)
    assert first["token"].startswith("brk_")
    inbox = json.loads(cli("principal", "create", "vn-gdc-inbox-2", "--json").stdout)
    assert inbox["principal"] == "vn-gdc-inbox-2"
    rotated = json.loads(cli("principal", "token", "vn-gdc-fp-hn-01", "--json").stdout)
    revoked = cli("principal", "revoke-token", first["id"])
    assert revoked.exit_code == 0, revoked.output
    disabled = cli("principal", "disable", "vn-gdc-inbox-2", "--reason", "replaced", "--json")
    assert json.loads(disabled.stdout)["status"] == "disabled"
    assert rotated["token"] != first["token"]

    # Another agency's desk: the broker's refusal, in one line.
    foreign = cli("focal-point", "suspend", "HK-CED/fp-01", "--reason", "x")
    assert foreign.exit_code != 0
    (line,) = [x for x in foreign.output.splitlines() if x.strip()]
    assert line.startswith("error: ")
    assert "auth.foreign_agency" in line
    for args, says in (
        (("focal-point", "suspend", "fp-hn-01", "--reason", "x"), "AGENCY/slug"),
        (
            ("focal-point", "designate", "VN-GDC/fp-hn-01", "VN-HK-CMAA-2013", "--from", "soon"),
            "--from",
        ),
        (("principal", "revoke-token", "not-an-id"), "TOKEN_ID"),
    ):
        mistake = cli(*args)
        assert mistake.exit_code != 0, args
        (line,) = [x for x in mistake.output.splitlines() if x.strip()]
        assert line.startswith("error: "), (args, line)
        assert says in line, (args, line)
        assert "Traceback" not in mistake.output
