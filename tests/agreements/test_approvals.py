"""Agreement changes approved by the parties (issue 19): proposals, signed approvals, quorum,
expiry, unilateral restrictions, and a leaf for every step.

The world of ARCHITECTURE.md section 2 with keys (the `exchange` harness), on SQLite and on
PostgreSQL. VN-KR-CUSTOMS is between VN-GDC and KR-KCS and covers narcotics, NPS and
precursors: a widening to CITES wildlife is what the tests propose.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db
from broker.agreements import changes
from broker.agreements.models import AgreementProposal
from broker.audit import repository as audit_repo
from broker.crypto import envelope as env
from broker.ids import utcnow
from broker.lifecycle import jobs as lifecycle_jobs
from broker.sdk import agreements as sdk
from broker.world import demo_world
from tests.agreements.changes import approve, change_agreement, propose, registrar
from tests.conftest import bearer
from tests.messages.conftest import Exchange
from tests.messages.conftest import exchange as exchange  # the harness fixture, here too
from tests.sdk.conftest import agency_side as agency_side  # a live broker and a keystore

KR = "VN-KR-CUSTOMS"
WILDLIFE = {"recipients": ["KR-KCS"], "agreement": KR, "offence": "cites_wildlife"}


def _document(agreement_id: str, **changes_: Any) -> dict[str, Any]:
    (doc,) = [a for a in demo_world()["agreements"] if a["id"] == agreement_id]
    return {**doc, **changes_}


def _widened() -> dict[str, Any]:
    return _document(KR, offences=["cites_wildlife", "narcotics", "nps", "precursors"])


def _events(kind: str, subject: str = KR) -> list[dict[str, Any]]:
    rows = db.call(audit_repo.list_events, kind=kind, subject=subject, limit=1000)
    return [{"actor": e.actor, **e.details} for e in rows]


def _admin(ex: Exchange) -> dict[str, str]:
    return bearer(ex.token_for("admin"))


def _approve(ex: Exchange, proposal: dict[str, Any], agency: str) -> Any:
    return approve(
        ex.client, registrar(ex.token_for, agency), proposal, agency, ex.agency_signing[agency]
    )


def _signed(ex: Exchange, payload: dict[str, Any], signer: str) -> str:
    return env.sign_compact(payload, ex.agency_signing[signer], env.TYP_AGREEMENT_APPROVAL)


def _post_approval(ex: Exchange, proposal: dict[str, Any], agency: str, jws: str) -> Any:
    return ex.client.post(
        f"/v1/agreements/{proposal['agreement_id']}/proposals/{proposal['id']}/approvals",
        json={"approval": jws},
        headers=registrar(ex.token_for, agency),
    )


def _current(ex: Exchange, agreement_id: str) -> dict[str, Any]:
    listed = ex.client.get("/v1/admin/agreements", headers=_admin(ex)).json()
    return dict(next(a for a in listed if a["id"] == agreement_id))


def _resubmit(ex: Exchange, routing: dict[str, Any], envelope: str) -> Any:
    return ex.submit(envelope, routing)


class TestWidening:
    def test_takes_effect_when_the_last_party_approves_and_not_before(
        self, exchange: Exchange
    ) -> None:
        ex = exchange
        refused, routing, envelope = ex.send(**WILDLIFE)
        assert (refused.status_code, refused.json()["code"]) == (403, "scope.offence_not_covered")
        proposal = propose(ex.client, registrar(ex.token_for, "VN-GDC"), _widened())
        assert proposal["status"] == "open"
        assert proposal["approvers"] == ["KR-KCS", "VN-GDC"]
        assert proposal["policy_sha256"] == sdk.policy_sha256(_widened())
        assert proposal["base_version"] == 1
        assert proposal["quorum"] == 2

        first = _approve(ex, proposal, "VN-GDC")
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "open"
        assert [a["agency"] for a in first.json()["approvals"]] == ["VN-GDC"]
        # One party's approval changes nothing: the same submit is still refused.
        still = _resubmit(ex, routing, envelope)
        assert (still.status_code, still.json()["code"]) == (403, "scope.offence_not_covered")
        assert _current(ex, KR)["version"] == 1

        last = _approve(ex, proposal, "KR-KCS")
        assert last.status_code == 200, last.text
        adopted = last.json()
        assert (adopted["status"], adopted["version"]) == ("adopted", 2)
        assert _current(ex, KR)["sha256"] == proposal["policy_sha256"]
        accepted = _resubmit(ex, routing, envelope)
        assert accepted.status_code == 201, accepted.text

        # Every step is on the log, each with the version's hash.
        (proposed,) = _events("agreement.proposed")
        assert proposed["proposal"] == proposal["id"]
        assert proposed["policy_sha256"] == proposal["policy_sha256"]
        assert proposed["actor"].startswith("registrar:")
        approved = _events("agreement.approved")
        assert [e["agency"] for e in approved] == ["VN-GDC", "KR-KCS"]
        assert {e["policy_sha256"] for e in approved} == {proposal["policy_sha256"]}
        updated = _events("agreement.updated")
        assert [(e["version"], e["policy_sha256"]) for e in updated][-1] == (
            2,
            proposal["policy_sha256"],
        )

    def test_an_approval_is_recorded_once(self, exchange: Exchange) -> None:
        ex = exchange
        proposal = propose(ex.client, _admin(ex), _widened())
        first = _approve(ex, proposal, "VN-GDC")
        again = _approve(ex, proposal, "VN-GDC")
        assert again.status_code == 200, again.text
        assert again.json()["approvals"] == first.json()["approvals"]
        assert len(_events("agreement.approved")) == 1
        adopted = _approve(ex, proposal, "KR-KCS").json()
        assert adopted["status"] == "adopted"
        # After it took effect, the same approval answers with the proposal as it stands.
        late = _approve(ex, proposal, "KR-KCS")
        assert late.status_code == 200
        assert late.json()["status"] == "adopted"
        assert len(_events("agreement.approved")) == 2
        assert len(_events("agreement.updated")) == 2  # version 1 (the world) and 2

    def test_a_joining_party_consents_too(self, exchange: Exchange) -> None:
        ex = exchange
        joined = _document(KR, parties=["HK-CED", "KR-KCS", "VN-GDC"])
        proposal = propose(ex.client, _admin(ex), joined)
        assert proposal["joining"] == ["HK-CED"]
        for agency in ("VN-GDC", "KR-KCS"):
            assert _approve(ex, proposal, agency).json()["status"] == "open"
        assert _current(ex, KR)["version"] == 1
        assert _approve(ex, proposal, "HK-CED").json()["status"] == "adopted"
        assert _current(ex, KR)["document"]["parties"] == ["HK-CED", "KR-KCS", "VN-GDC"]


class TestRefusals:
    def test_a_registrar_of_no_party(self, exchange: Exchange) -> None:
        ex = exchange
        proposal = propose(ex.client, _admin(ex), _widened())
        hk = registrar(ex.token_for, "HK-CED")
        refused = approve(ex.client, hk, proposal, "HK-CED", ex.agency_signing["HK-CED"])
        assert (refused.status_code, refused.json()["code"]) == (403, "agreement.not_party")
        listed = ex.client.get(f"/v1/agreements/{KR}/proposals", headers=hk)
        assert (listed.status_code, listed.json()["code"]) == (403, "agreement.not_party")
        again = ex.client.post(f"/v1/agreements/{KR}/proposals", json=_widened(), headers=hk)
        assert (again.status_code, again.json()["code"]) == (403, "agreement.not_party")
        assert _events("agreement.approved") == []

    @pytest.mark.parametrize("role", ["focal_point", "agency", "auditor"])
    def test_other_roles_may_not_propose_or_approve(self, exchange: Exchange, role: str) -> None:
        ex = exchange
        binding = {
            "focal_point": {"focal_point_id": "VN-GDC/fp-hcm-01"},
            "agency": {"agency_id": "VN-GDC"},
            "auditor": {},
        }[role]
        headers = bearer(ex.token_for(role, **binding))
        proposal = propose(ex.client, _admin(ex), _widened())
        assert propose(ex.client, headers, _widened(), status=403)["code"] == "auth.forbidden"
        jws = sdk.sign_approval(proposal, "VN-GDC", ex.agency_signing["VN-GDC"])
        answer = ex.client.post(
            f"/v1/agreements/{KR}/proposals/{proposal['id']}/approvals",
            json={"approval": jws},
            headers=headers,
        )
        assert answer.status_code == 403

    def test_the_administrator_may_not_approve(self, exchange: Exchange) -> None:
        ex = exchange
        proposal = propose(ex.client, _admin(ex), _widened())
        answer = approve(ex.client, _admin(ex), proposal, "VN-GDC", ex.agency_signing["VN-GDC"])
        assert (answer.status_code, answer.json()["code"]) == (403, "auth.forbidden")

    def test_a_wrong_hash_another_key_or_a_bad_signature(self, exchange: Exchange) -> None:
        ex = exchange
        proposal = propose(ex.client, _admin(ex), _widened())
        payload = sdk.approval_statement(
            agreement=KR,
            proposal=proposal["id"],
            policy_sha256=sdk.policy_sha256(_document(KR)),  # the current version's, not this
            agency="VN-GDC",
        )
        wrong = _post_approval(ex, proposal, "VN-GDC", _signed(ex, payload, "VN-GDC"))
        assert (wrong.status_code, wrong.json()["code"]) == (422, "agreement.approval_invalid")
        right = {**payload, "policy_sha256": proposal["policy_sha256"]}
        other_key = _post_approval(ex, proposal, "VN-GDC", _signed(ex, right, "KR-KCS"))
        assert (other_key.status_code, other_key.json()["code"]) == (
            422,
            "agreement.approval_key_not_party",
        )
        # KR-KCS's own approval, posted by VN-GDC's registrar: it approves only for VN-GDC.
        theirs = {**right, "agency": "KR-KCS"}
        posted = _post_approval(ex, proposal, "VN-GDC", _signed(ex, theirs, "VN-GDC"))
        assert (posted.status_code, posted.json()["code"]) == (422, "agreement.approval_invalid")
        head, body, sig = _signed(ex, right, "VN-GDC").split(".")
        forged = f"{head}.{body}.{sig[:-4]}AAAA"
        bad = _post_approval(ex, proposal, "VN-GDC", forged)
        assert (bad.status_code, bad.json()["code"]) == (422, "agreement.approval_invalid")
        typ = env.sign_compact(right, ex.agency_signing["VN-GDC"], env.TYP_ACK)
        other_typ = _post_approval(ex, proposal, "VN-GDC", typ)
        assert (other_typ.status_code, other_typ.json()["code"]) == (
            422,
            "agreement.approval_invalid",
        )
        assert _events("agreement.approved") == []
        # The right one is still accepted.
        assert (
            _post_approval(ex, proposal, "VN-GDC", _signed(ex, right, "VN-GDC")).status_code == 200
        )

    def test_a_new_proposal_supersedes_the_open_one(self, exchange: Exchange) -> None:
        ex = exchange
        first = propose(ex.client, _admin(ex), _widened())
        assert _approve(ex, first, "VN-GDC").status_code == 200
        second = propose(
            ex.client, registrar(ex.token_for, "KR-KCS"), _document(KR, max_handling="TLP:AMBER")
        )
        assert _events("agreement.proposed")[-1]["supersedes"] == [first["id"]]
        stale = _approve(ex, first, "KR-KCS")
        assert (stale.status_code, stale.json()["code"]) == (409, "agreement.proposal_stale")
        listed = ex.client.get(f"/v1/agreements/{KR}/proposals", headers=_admin(ex)).json()
        assert [(p["id"], p["status"]) for p in listed] == [
            (first["id"], "superseded"),
            (second["id"], "open"),
        ]

    def test_a_quorum_beyond_the_parties_is_refused(self, exchange: Exchange) -> None:
        ex = exchange
        answer = ex.client.post(
            f"/v1/agreements/{KR}/proposals",
            json=_document(KR, approval_quorum=3),
            headers=_admin(ex),
        )
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["pointer"] == "/approval_quorum"

    def test_nobody_changes_an_agreement_alone_over_http(self, exchange: Exchange) -> None:
        ex = exchange
        answer = ex.client.put(f"/v1/admin/agreements/{KR}", json=_widened(), headers=_admin(ex))
        assert answer.status_code == 404  # no such route any more
        assert _current(ex, KR)["version"] == 1


class TestExpiry:
    def _expire(self, proposal_id: str) -> None:
        async def backdate(s: AsyncSession) -> None:
            await s.execute(
                update(AgreementProposal)
                .where(AgreementProposal.id == uuid.UUID(proposal_id))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )

        db.call(backdate)

    def test_an_expired_proposal_is_refused_and_closed_by_the_sweep(
        self, exchange: Exchange
    ) -> None:
        ex = exchange
        proposal = propose(ex.client, _admin(ex), _widened())
        assert _approve(ex, proposal, "VN-GDC").status_code == 200
        self._expire(proposal["id"])
        late = _approve(ex, proposal, "KR-KCS")
        assert (late.status_code, late.json()["code"]) == (410, "agreement.proposal_expired")
        lifecycle_jobs.purge()  # the lifecycle sweep closes it
        (lapsed,) = _events("agreement.proposal_expired")
        assert (lapsed["proposal"], lapsed["policy_sha256"]) == (
            proposal["id"],
            proposal["policy_sha256"],
        )
        assert db.call(changes.expire_proposals) == 0  # once
        listed = ex.client.get(f"/v1/agreements/{KR}/proposals", headers=_admin(ex)).json()
        assert listed[0]["status"] == "expired"
        again = _approve(ex, proposal, "KR-KCS")
        assert (again.status_code, again.json()["code"]) == (410, "agreement.proposal_expired")
        # The approval recorded before the expiry still answers as it was.
        assert _approve(ex, proposal, "VN-GDC").status_code == 200
        assert _current(ex, KR)["version"] == 1


class TestQuorum:
    def test_a_multilateral_agreement_takes_effect_at_its_quorum(self, exchange: Exchange) -> None:
        ex = exchange
        parties = ["CN-GACC", "INT-INCB", "KR-KCS", "TH-CUS", "VN-GDC"]
        # Without approval_quorum every party approves: the fifth approval carries it.
        with_quorum = _document("INCB-IONICS", approval_quorum=3)
        proposal = propose(ex.client, _admin(ex), with_quorum)
        assert proposal["quorum"] == 5
        for agency in parties[:4]:
            assert _approve(ex, proposal, agency).json()["status"] == "open"
        assert _approve(ex, proposal, parties[4]).json()["status"] == "adopted"
        # Now three of the five suffice.
        widened = {**with_quorum, "offences": ["cites_wildlife", *with_quorum["offences"]]}
        proposal = propose(ex.client, registrar(ex.token_for, "TH-CUS"), widened)
        assert proposal["quorum"] == 3
        for agency in ("TH-CUS", "INT-INCB"):
            assert _approve(ex, proposal, agency).json()["status"] == "open"
        assert _current(ex, "INCB-IONICS")["version"] == 2
        adopted = _approve(ex, proposal, "KR-KCS").json()
        assert (adopted["status"], adopted["version"]) == ("adopted", 3)
        current = _current(ex, "INCB-IONICS")
        assert current["sha256"] == proposal["policy_sha256"]
        # A party that did not approve cannot change anything any more: it is adopted.
        late = _approve(ex, proposal, "CN-GACC")
        assert (late.status_code, late.json()["code"]) == (409, "agreement.proposal_stale")
        updated = _events("agreement.updated", "INCB-IONICS")
        assert updated[-1]["policy_sha256"] == proposal["policy_sha256"]


class TestRestriction:
    def _restrict(self, ex: Exchange, agency: str, body: dict[str, Any]) -> Any:
        return ex.client.post(
            f"/v1/agreements/{KR}/restrictions", json=body, headers=registrar(ex.token_for, agency)
        )

    def test_an_exclusion_in_its_own_direction_takes_effect_at_once(
        self, exchange: Exchange
    ) -> None:
        ex = exchange
        nps = {"recipients": ["KR-KCS"], "agreement": KR, "offence": "nps"}
        accepted, _, _ = ex.send(**nps)
        assert accepted.status_code == 201, accepted.text
        answer = self._restrict(
            ex,
            "VN-GDC",
            {"action": "exclude", "to": "KR-KCS", "offences": ["nps"], "reason": "Review"},
        )
        assert answer.status_code == 201, answer.text
        version = answer.json()["agreement"]
        assert version["version"] == 2
        refused, _, _ = ex.send(**nps)
        assert (refused.status_code, refused.json()["code"]) == (403, "scope.direction_excluded")
        # The other direction is the partner's to restrict, not VN-GDC's.
        back = ex.send(
            fp="KR-KCS/fp-01",
            recipients=["VN-GDC"],
            agreement=KR,
            offence="nps",
        )[0]
        assert back.status_code == 201, back.text
        (restricted,) = _events("agreement.restricted")
        assert (restricted["action"], restricted["policy_sha256"]) == ("exclude", version["sha256"])
        assert _events("agreement.updated")[-1]["policy_sha256"] == version["sha256"]
        same = self._restrict(
            ex,
            "VN-GDC",
            {"action": "exclude", "to": "KR-KCS", "offences": ["nps"], "reason": "Review"},
        )
        assert (same.status_code, same.json()["code"]) == (409, "registry.status_unchanged")

    def test_a_suspension_takes_effect_at_once_and_lifting_it_is_a_proposal(
        self, exchange: Exchange
    ) -> None:
        ex = exchange
        pending = propose(ex.client, _admin(ex), _widened())
        answer = self._restrict(ex, "KR-KCS", {"action": "suspend", "reason": "Data review"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["agreement"]["status"] == "suspended"
        refused, _, _ = ex.send(recipients=["KR-KCS"], agreement=KR, offence="nps")
        assert (refused.status_code, refused.json()["code"]) == (403, "scope.agreement_suspended")
        # The proposal made before the restriction can no longer take effect.
        stale = _approve(ex, pending, "VN-GDC")
        assert (stale.status_code, stale.json()["code"]) == (409, "agreement.proposal_stale")
        # Lifting it is a widening: both parties approve.
        lifted = change_agreement(ex.client, ex.token_for, _document(KR), signers=ex.agency_signing)
        assert lifted["version"] == 3
        accepted, _, _ = ex.send(recipients=["KR-KCS"], agreement=KR, offence="nps")
        assert accepted.status_code == 201, accepted.text

    def test_only_a_party_restricts(self, exchange: Exchange) -> None:
        ex = exchange
        answer = self._restrict(ex, "HK-CED", {"action": "suspend", "reason": "No"})
        assert (answer.status_code, answer.json()["code"]) == (403, "agreement.not_party")
        answer = ex.client.post(
            f"/v1/agreements/{KR}/restrictions",
            json={"action": "suspend", "reason": "No"},
            headers=_admin(ex),
        )
        assert answer.status_code == 403
        bad = self._restrict(
            ex, "VN-GDC", {"action": "exclude", "to": "VN-GDC", "offences": ["nps"], "reason": "x"}
        )
        assert (bad.status_code, bad.json()["errors"][0]["pointer"]) == (422, "/to")
        assert _current(ex, KR)["version"] == 1
        assert _events("agreement.restricted") == []


# --- the registrar's command line, against a live broker ------------------------------------


CMAA = "VN-HK-CMAA-2013"


class TestRegistrarCli:
    def _cli(self, s: dict[str, Any], *args: str) -> Any:
        from broker.cli.main import app

        return s["runner"].invoke(app, ["registrar", *args])

    def test_list_approve_and_restrict(self, agency_side: dict[str, Any], token_for: Any) -> None:
        s = agency_side
        hk = token_for("registrar", agency_id="HK-CED")
        widened = _document(CMAA, offences=[*_document(CMAA)["offences"], "nps"])
        with httpx2.Client(base_url=s["url"]) as http:
            proposal = propose(http, bearer(token_for("admin")), widened)
        listed = self._cli(s, "proposals", CMAA, "--token", hk, "--json")
        assert listed.exit_code == 0, listed.output
        assert [p["id"] for p in json.loads(listed.stdout)] == [proposal["id"]]
        table = self._cli(s, "proposals", CMAA, "--token", hk, "--table")
        assert proposal["id"] in table.stdout
        assert "VN-GDC" in table.stdout  # awaited

        approved = self._cli(
            s, "approve", CMAA, proposal["id"], "--token", hk, "--keystore", str(s["keys"]),
            "--yes", "--json",
        )  # fmt: skip
        assert approved.exit_code == 0, approved.output
        answer = json.loads(approved.stdout)
        assert [a["agency"] for a in answer["approvals"]] == ["HK-CED"]
        assert answer["status"] == "open"
        # The change and its hash were shown (on stderr, so that stdout stays JSON).
        assert '+    "nps"' in approved.stderr
        assert f"policy sha256 {proposal['policy_sha256']}" in approved.stderr

        restricted = self._cli(
            s, "restrict", CMAA, "--exclude-to", "VN-GDC", "--offence", "tobacco",
            "--reason", "Domestic review", "--token", hk, "--json",
        )  # fmt: skip
        assert restricted.exit_code == 0, restricted.output
        assert json.loads(restricted.stdout)["agreement"]["version"] == 2
        (event,) = _events("agreement.restricted", CMAA)
        assert (event["agency"], event["offences"]) == ("HK-CED", ["tobacco"])

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["restrict", CMAA, "--reason", "x"], "--suspend or --exclude-to"),
            (["restrict", CMAA, "--reason", "x", "--exclude-to", "VN-GDC"], "--offence"),
            (["restrict", CMAA, "--reason", "x", "--suspend", "--offence", "nps"], "--offence"),
            (["approve", CMAA, "0190e353-4100-7a1c-9d2e-5b8f4a1c2d3e"], "PROPOSAL"),
            (
                ["restrict", CMAA, "--reason", "x", "--exclude-to", "VN-GDC", "--offence", "nope"],
                "--offence 'nope'",
            ),
        ],
    )
    def test_mistakes_end_in_one_line(
        self, agency_side: dict[str, Any], token_for: Any, args: list[str], says: str
    ) -> None:
        s = agency_side
        hk = token_for("registrar", agency_id="HK-CED")
        result = self._cli(s, *args, "--token", hk)
        assert result.exit_code != 0
        (line,) = [line for line in result.output.splitlines() if line.strip()]
        assert line.startswith("error: ")
        assert says in line
        assert "Traceback" not in result.output

    def test_approving_needs_a_terminal_or_yes(
        self, agency_side: dict[str, Any], token_for: Any
    ) -> None:
        s = agency_side
        hk = token_for("registrar", agency_id="HK-CED")
        with httpx2.Client(base_url=s["url"]) as http:
            proposal = propose(
                http, bearer(token_for("admin")), _document(CMAA, max_handling="TLP:AMBER")
            )
        result = self._cli(
            s, "approve", CMAA, proposal["id"], "--token", hk, "--keystore", str(s["keys"])
        )
        assert result.exit_code != 0
        assert result.stderr.splitlines()[-1].startswith("error: --yes")
        refused = self._cli(
            s, "proposals", CMAA, "--token", token_for("registrar", agency_id="NZ-POL")
        )
        assert refused.exit_code != 0
        assert "agreement.not_party" in refused.output


def test_the_operators_update_command_proposes(
    exchange: Exchange, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from broker.cli.main import app

    monkeypatch.setenv("LOGNAME", "ops")  # getpass.getuser() reads it first
    document = tmp_path / "kr.json"
    document.write_text(json.dumps(_widened()))
    runner = CliRunner()
    made = runner.invoke(app, ["admin", "agreement", "update", KR, str(document)])
    assert made.exit_code == 0, made.output
    proposal = json.loads(made.stdout)
    assert (proposal["status"], proposal["proposed_by"]) == ("open", "cli:ops")
    assert _current(exchange, KR)["version"] == 1  # proposed, not applied
    listed = runner.invoke(app, ["admin", "agreement", "proposals", KR])
    assert [p["id"] for p in json.loads(listed.stdout)] == [proposal["id"]]
    wrong = runner.invoke(app, ["admin", "agreement", "update", "NO-SUCH", str(document)])
    assert wrong.exit_code != 0
    assert "request.not_found" in wrong.output
