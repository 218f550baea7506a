"""One exchange per cooperation arrangement of the demo world, end to end over real HTTP.

Each test sends an alert with the SDK, lets its recipients pull, open, verify and acknowledge it,
answers it with feedback, and checks what the original sender then sees: its deliveries
acknowledged, the feedback listed in `GET /v1/messages/{mid}`, and the feedback itself, opened.
All names, numbers and permits in the bodies are fictional.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx2
import pytest

from broker.sdk import agent
from broker.sdk.agent import ScopeRefused
from broker.sdk.client import BrokerAPIError, BrokerClient
from tests.agreements.changes import change_agreement
from tests.arrangements.conftest import Arrangements, Desk, deliveries

TODAY = dt.datetime.now(dt.UTC).date().isoformat()


def feedback_seen(
    arr: Arrangements, sender: Desk, fmid: str, mid: str, **routing: Any
) -> dict[str, Any]:
    """The original sender pulls and opens the feedback `fmid` on its alert `mid`."""
    fb = arr.opened(sender, fmid)
    assert fb["routing"]["kind"] == "feedback"
    assert fb["routing"]["in_reply_to"] == mid
    assert {k: fb["routing"].get(k) for k in routing} == routing
    assert mid in fb["body"]["references"]
    return fb


# --- 1. Prosecutors: VN-MZ-WILDLIFE-2017 ------------------------------------------------------

PERMIT = {"kind": "export_permit", "number": "MZ/2026/EX-00912", "issuing_country": "MZ"}
PANGOLIN_SHIPMENT = {
    "title": "Pangolin scales and ivory declared as cashew shells, Maputo to Hai Phong",
    "summary": "Consignor known from an earlier case; the export permits presented do not match "
    "the permit register of the management authority.",
    "language": "en",
    "subjects": [
        {
            "type": "shipment",
            "ref": "s1",
            "container_numbers": ["MSKU9070323"],
            "bill_of_lading": "MAEU-MPM261104",
            "hs_code": "080132",
            "hs_edition": "HS2022",
            "declared_goods": "Cashew nut shells",
            "suspected_goods": "Pangolin scales and raw elephant ivory",
            "port_of_loading": "MZMPM",
            "port_of_discharge": "VNHPH",
            "cites": [
                {"species": "Smutsia temminckii", "appendix": "I", "documents": [PERMIT]},
                {
                    "species": "Loxodonta africana",
                    "appendix": "I",
                    "documents": [
                        {
                            "kind": "re_export_certificate",
                            "number": "MZ/2026/RE-00077",
                            "issuing_country": "MZ",
                        }
                    ],
                },
            ],
        },
        {
            "type": "person",
            "names": [{"latin": "Joao Exemplo Ficticio"}],
            "nationalities": ["MZ"],
            "roles": ["consignor"],
            "cites": [{"species": "Smutsia temminckii", "appendix": "I", "documents": [PERMIT]}],
        },
        {"type": "organisation", "name": "Exemplo Comercio Lda", "country": "MZ"},
    ],
}


def test_prosecutors_wildlife_vn_spp_to_mz_pgr(arrangements: Arrangements) -> None:
    arr = arrangements
    spp, pgr = arr.desk("VN-SPP/fp-01"), arr.desk("MZ-PGR/fp-01")
    mid = arr.send(
        spp,
        PANGOLIN_SHIPMENT,
        recipients=["MZ-PGR"],
        agreement="VN-MZ-WILDLIFE-2017",
        offence="cites_wildlife",
    )
    alert = arr.opened(pgr, mid)
    assert alert["body"] == PANGOLIN_SHIPMENT
    assert alert["routing"]["subject_types"] == ["organisation", "person", "shipment"]
    seizure = {
        "type": "seizure",
        "date": TODAY,
        "place": {"locode": "MZMPM", "text": "Port of Maputo, container terminal"},
        "commodity": "wildlife",
        "description": "Scales in 40 bags under cashew shells; the permit was found forged.",
        "quantity": {"value": 380, "unit": "kg"},
        "species": "Smutsia temminckii",
        "cites_appendix": "I",
        "cites_documents": [PERMIT],
    }
    fmid = arr.answer(
        pgr,
        alert,
        {"narrative": "Container held before loading; consignor charged.", "seizures": [seizure]},
        outcome="seized",
    )
    assert deliveries(arr.status(spp, mid)) == {"MZ-PGR": ("acknowledged", [fmid])}
    fb = feedback_seen(
        arr, spp, fmid, mid, outcome="seized", commodity="wildlife", quantity_band="100_1000kg"
    )
    assert fb["body"]["seizures"][0]["cites_documents"] == [PERMIT]
    assert deliveries(arr.status(pgr, fmid)) == {"VN-SPP": ("acknowledged", [])}


# --- 2. Incident sharing: INCB-IONICS ---------------------------------------------------------

ACETIC_ANHYDRIDE = {
    "name": "Acetic anhydride",
    "cas": "108-24-7",
    "quantity": {"value": 2400, "unit": "l"},
}
STOPPED_SHIPMENT = {
    "title": "Acetic anhydride stopped before export: consignee unknown at its address",
    "summary": "Pre-export notification answered negatively; the drums are held at the port.",
    "language": "en",
    "subjects": [
        {
            "type": "incident",
            "incident_type": "stopped_shipment",
            "date": TODAY,
            "place": {"locode": "VNHPH", "country": "VN"},
            "substances": [ACETIC_ANHYDRIDE],
            "description": "Twelve drums declared as industrial solvent for a textile plant.",
        },
        {
            "type": "shipment",
            "container_numbers": ["TGHU1234567"],
            "declared_goods": "Industrial solvent",
            "port_of_loading": "VNHPH",
            "port_of_discharge": "CNSHA",
            "substances": [ACETIC_ANHYDRIDE],
        },
        {"type": "organisation", "name": "Example Textile Trading Co", "country": "CN"},
    ],
}


def test_incb_precursor_incident_to_incb_and_gacc(arrangements: Arrangements) -> None:
    arr = arrangements
    gdc = arr.desk("VN-GDC/fp-hcm-01")
    incb, gacc = arr.desk("INT-INCB/fp-ionics-01"), arr.desk("CN-GACC/fp-01")
    mid = arr.send(
        gdc,
        STOPPED_SHIPMENT,
        recipients=["CN-GACC", "INT-INCB"],
        agreement="INCB-IONICS",
        offence="precursors",
    )
    for desk in (incb, gacc):
        alert = arr.opened(desk, mid)
        assert alert["body"]["subjects"][0]["substances"] == [ACETIC_ANHYDRIDE]
        assert alert["routing"]["subject_types"] == ["incident", "organisation", "shipment"]
    seizure = {
        "type": "seizure",
        "date": TODAY,
        "place": {"locode": "CNSHA"},
        "commodity": "precursors",
        "quantity": {"value": 800, "unit": "l"},
        "substances": [{**ACETIC_ANHYDRIDE, "quantity": {"value": 800, "unit": "l"}}],
    }
    fmid = arr.answer(
        gacc,
        alert,
        {
            "narrative": "An earlier consignment to the same consignee was found.",
            "seizures": [seizure],
        },
        outcome="seized",
    )
    assert deliveries(arr.status(gdc, mid)) == {
        "CN-GACC": ("acknowledged", [fmid]),
        "INT-INCB": ("acknowledged", []),
    }
    fb = feedback_seen(arr, gdc, fmid, mid, outcome="seized", commodity="precursors")
    assert "quantity_band" not in fb["routing"]  # a volume has no weight band
    assert fb["body"]["seizures"][0]["substances"][0]["cas"] == "108-24-7"


# --- 3. A receive-only party: INT-WCO-RILOAP in MEKONG-DRAGON-V -------------------------------

IVORY_REEFER = {
    "title": "Ivory in a reefer container through Port Klang",
    "summary": "X-ray images consistent with tusks under frozen fish.",
    "subjects": [
        {
            "type": "shipment",
            "container_numbers": ["CSQU3054383"],
            "declared_goods": "Frozen fish",
            "port_of_loading": "VNSGN",
            "port_of_discharge": "HKHKG",
            "transit_ports": ["MYPKG"],
            "cites": [{"species": "Loxodonta africana", "appendix": "I"}],
        }
    ],
}


def test_rilo_receives_but_may_not_answer(arrangements: Arrangements) -> None:
    arr = arrangements
    gdc = arr.desk("VN-GDC/fp-hcm-01")
    rilo, hk = arr.desk("INT-WCO-RILOAP/fp-analyst-01"), arr.desk("HK-CED/fp-01")
    arr.addressable("TH-CUS")
    mid = arr.send(
        gdc,
        IVORY_REEFER,
        recipients=["HK-CED", "INT-WCO-RILOAP", "TH-CUS"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="cites_wildlife",
    )
    alert = arr.opened(rilo, mid)
    assert alert["routing"]["operation"] == "MEKONG-DRAGON-V"
    note = {"narrative": "Matches a RILO risk profile for reefer containers via Port Klang."}
    # The dry run says no; submitted regardless, the broker refuses it on the same rule.
    with pytest.raises(ScopeRefused) as dry:
        arr.answer(rilo, alert, note, outcome="under_investigation")
    assert dry.value.code == "scope.sender_receive_only"
    with pytest.raises(BrokerAPIError) as refused:
        arr.answer(rilo, alert, note, outcome="under_investigation", dry_run_first=False)
    assert (refused.value.status, refused.value.code) == (403, "scope.sender_receive_only")
    assert refused.value.problem["code"] == "scope.sender_receive_only"
    # Nor may it originate an alert under the frame.
    with pytest.raises(BrokerAPIError) as alert_refused:
        arr.send(
            rilo,
            IVORY_REEFER,
            recipients=["VN-GDC"],
            agreement="MEKONG-DRAGON",
            offence="cites_wildlife",
            dry_run_first=False,
        )
    assert (alert_refused.value.status, alert_refused.value.code) == (
        403,
        "scope.sender_receive_only",
    )
    hk_alert = arr.opened(hk, mid)
    seizure = {
        "type": "seizure",
        "date": TODAY,
        "place": {"locode": "HKHKG", "text": "Kwai Chung Container Terminal"},
        "commodity": "wildlife",
        "quantity": {"value": 212, "unit": "kg"},
        "species": "Loxodonta africana",
        "cites_appendix": "I",
    }
    fmid = arr.answer(
        hk,
        hk_alert,
        {"narrative": "Tusks found under the fish.", "seizures": [seizure]},
        outcome="seized",
    )
    assert deliveries(arr.status(gdc, mid)) == {
        "HK-CED": ("acknowledged", [fmid]),
        "INT-WCO-RILOAP": ("acknowledged", []),
        "TH-CUS": ("available", []),
    }
    feedback_seen(arr, gdc, fmid, mid, operation="MEKONG-DRAGON-V", quantity_band="100_1000kg")


# --- 4. Border liaison offices: VN-CN-BLO-LAOCAI-HEKOU ----------------------------------------

METH = {
    "name": "Methamphetamine",
    "cas": "537-46-2",
    "quantity": {"value": 20000, "unit": "tablets"},
}
TRUCK = {
    "title": "Truck crossing at Lao Cai - Hekou with methamphetamine tablets",
    "summary": "A container truck due at the Hekou side within the hour; tablets hidden in the "
    "fuel tank according to a source.",
    "language": "en",
    "subjects": [
        {
            "type": "conveyance",
            "ref": "c1",
            "kind": "vehicle",
            "plate": "24C-12345",
            "plate_country": "VN",
        },
        {
            "type": "route",
            "origin": {"text": "Lao Cai international border gate", "country": "VN"},
            "destination": {"text": "Hekou port", "country": "CN"},
            "conveyances": ["c1"],
            "modus_operandi": "Tablets in a false compartment of the fuel tank.",
        },
        {"type": "shipment", "declared_goods": "Fresh bananas", "substances": [METH]},
        {
            "type": "person",
            "names": [{"latin": "Tran Van Vi Du"}],
            "nationalities": ["VN"],
            "roles": ["driver"],
        },
    ],
}


def test_border_liaison_offices_lao_cai_to_hekou(arrangements: Arrangements) -> None:
    arr = arrangements
    laocai, hekou = arr.desk("VN-BLO-LAOCAI/fp-desk-01"), arr.desk("CN-BLO-HEKOU/fp-desk-01")
    mid = arr.send(
        laocai,
        TRUCK,
        recipients=["CN-BLO-HEKOU"],
        agreement="VN-CN-BLO-LAOCAI-HEKOU",
        offence="narcotics",
        priority="urgent",
    )
    alert = arr.opened(hekou, mid)
    assert alert["routing"]["priority"] == "urgent"
    assert alert["body"]["subjects"][2]["substances"] == [METH]
    seizure = {
        "type": "seizure",
        "date": TODAY,
        "place": {"text": "Hekou port inspection yard", "country": "CN"},
        "commodity": "narcotics",
        "quantity": {"value": 2.1, "unit": "kg"},
        "substances": [METH],
    }
    fmid = arr.answer(
        hekou,
        alert,
        {"narrative": "Truck stopped; driver held.", "seizures": [seizure]},
        outcome="arrest",
    )
    assert deliveries(arr.status(laocai, mid)) == {"CN-BLO-HEKOU": ("acknowledged", [fmid])}
    feedback_seen(arr, laocai, fmid, mid, outcome="arrest", quantity_band="1_10kg")
    # Each desk's border crossing shows in the admin listing of its agency's focal points.
    with arr.admin() as admin:
        for agency, locality, subdivision in (
            ("VN-BLO-LAOCAI", "Lao Cai international border gate", "VN-02"),
            ("CN-BLO-HEKOU", "Hekou port, Honghe prefecture", "CN-YN"),
        ):
            (fp,) = admin.get("/v1/admin/focal-points", agency=agency)
            assert (fp["id"], fp["agency_id"]) == (f"{agency}/fp-desk-01", agency)
            assert (fp["locality"], fp["subdivision"]) == (locality, subdivision)


# --- 5. Twin Guardian: VN-KR-CUSTOMS ----------------------------------------------------------

NPS_ONLINE = {
    "title": "Synthetic cathinone sold through an online shop, parcels to Ho Chi Minh City",
    "summary": "Test purchases traced the parcels to an air waybill; the seller also ships to Busan.",
    "language": "en",
    "subjects": [
        {
            "type": "online_platform",
            "platform": "Example Market",
            "url": "https://market.example/shop/98765",
            "account_handle": "lab_supply_fictional",
        },
        {
            "type": "shipment",
            "air_waybill": "020-12345675",
            "declared_goods": "Bath salts",
            "port_of_loading": "KRICN",
            "port_of_discharge": "VNSGN",
            "substances": [
                {"name": "3-Methylmethcathinone (3-MMC)", "quantity": {"value": 2, "unit": "kg"}}
            ],
        },
        {"type": "person", "names": [{"latin": "Kim Yesi Example"}], "roles": ["seller"]},
    ],
}


def test_twin_guardian_kr_kcs_to_vn_gdc(arrangements: Arrangements) -> None:
    arr = arrangements
    kcs, gdc = arr.desk("KR-KCS/fp-01"), arr.desk("VN-GDC/fp-hn-01")
    fields: dict[str, Any] = {
        "recipients": ["VN-GDC"],
        "agreement": "VN-KR-CUSTOMS",
        "offence": "nps",
    }
    # The operation ran in 2024: under it the broker refuses; under the agreement it accepts.
    with pytest.raises(ScopeRefused) as late:
        arr.compose(kcs, NPS_ONLINE, operation="TWIN-GUARDIAN-II", **fields)
    assert late.value.code == "scope.operation_outside_window"
    mid = arr.send(kcs, NPS_ONLINE, **fields)
    alert = arr.opened(gdc, mid)
    assert alert["routing"]["operation"] is None
    seizure = {
        "type": "seizure",
        "date": TODAY,
        "place": {"locode": "VNSGN", "text": "Tan Son Nhat express cargo terminal"},
        "commodity": "nps",
        "quantity": {"value": 8.2, "unit": "kg"},
    }
    fmid = arr.answer(
        gdc,
        alert,
        {"narrative": "Parcels opened; consignee arrested.", "seizures": [seizure]},
        outcome="seized",
    )
    assert deliveries(arr.status(kcs, mid)) == {"VN-GDC": ("acknowledged", [fmid])}
    feedback_seen(arr, kcs, fmid, mid, outcome="seized", commodity="nps", quantity_band="1_10kg")


# --- 6. Customs mutual assistance: VN-HK-CMAA-2013 --------------------------------------------

CIGARETTES = {
    "title": "Cigarettes declared as paper products, Hai Phong to Hong Kong",
    "summary": "Weight and declared goods do not match; consignee is a shell company.",
    "subjects": [
        {
            "type": "shipment",
            "container_numbers": ["OOLU8123457"],
            "hs_code": "480256",
            "hs_edition": "HS2022",
            "declared_goods": "Printing paper",
            "suspected_goods": "Cigarettes",
            "port_of_loading": "VNHPH",
            "port_of_discharge": "HKHKG",
        }
    ],
}


def test_customs_vn_gdc_to_hk_ced(arrangements: Arrangements) -> None:
    arr = arrangements
    gdc, hk = arr.desk("VN-GDC/fp-hcm-01"), arr.desk("HK-CED/fp-01")
    mid = arr.send(
        gdc,
        CIGARETTES,
        recipients=["HK-CED"],
        agreement="VN-HK-CMAA-2013",
        offence="tobacco",
        handling="TLP:AMBER+STRICT",
    )
    alert = arr.opened(hk, mid)
    assert alert["routing"]["handling"] == "TLP:AMBER+STRICT"
    seizure = {
        "type": "seizure",
        "date": TODAY,
        "place": {"locode": "HKHKG"},
        "commodity": "tobacco",
        "quantity": {"value": 1200000, "unit": "sticks"},
    }
    fmid = arr.answer(
        hk,
        alert,
        {"narrative": "1.2 million sticks behind the paper rolls.", "seizures": [seizure]},
        outcome="seized",
        quantity_band="n_a",
    )
    assert deliveries(arr.status(gdc, mid)) == {"HK-CED": ("acknowledged", [fmid])}
    feedback_seen(arr, gdc, fmid, mid, commodity="tobacco", quantity_band="n_a")


# --- 7. Police cooperation: VN-NZ-TNC-2019 ----------------------------------------------------

LAUNDERING = {
    "title": "Proceeds moved through a remittance company to Auckland",
    "summary": "Structured transfers under reporting thresholds, same beneficiary.",
    "subjects": [
        {"type": "organisation", "name": "Example Remit Ltd", "country": "NZ"},
        {
            "type": "person",
            "names": [{"latin": "Le Thi Mau"}],
            "nationalities": ["VN"],
            "roles": ["financier"],
        },
    ],
}


def test_police_vn_mps_to_nz_pol_and_the_excluded_direction(arrangements: Arrangements) -> None:
    arr = arrangements
    mps, pol = arr.desk("VN-MPS/fp-01"), arr.desk("NZ-POL/fp-01")
    mid = arr.send(
        mps,
        LAUNDERING,
        recipients=["NZ-POL"],
        agreement="VN-NZ-TNC-2019",
        offence="money_laundering",
    )
    alert = arr.opened(pol, mid)
    fmid = arr.answer(
        pol,
        alert,
        {"narrative": "Accounts identified; production orders sought."},
        outcome="under_investigation",
    )
    assert deliveries(arr.status(mps, mid)) == {"NZ-POL": ("acknowledged", [fmid])}
    fb = feedback_seen(arr, mps, fmid, mid, outcome="under_investigation")
    assert fb["routing"]["subject_types"] == ["organisation", "person"]
    # Narcotics from NZ-POL to VN-MPS: excluded (no assurance is recorded), dry run or not.
    narcotics = {**LAUNDERING, "title": "Methamphetamine importation network"}
    fields: dict[str, Any] = {
        "recipients": ["VN-MPS"],
        "agreement": "VN-NZ-TNC-2019",
        "offence": "narcotics",
    }
    with pytest.raises(ScopeRefused) as dry:
        arr.compose(pol, narcotics, **fields)
    assert dry.value.code == "scope.direction_excluded"
    with pytest.raises(BrokerAPIError) as refused:
        arr.send(pol, narcotics, dry_run_first=False, **fields)
    assert (refused.value.status, refused.value.code) == (403, "scope.direction_excluded")
    assert arr.pull(mps) == []  # nothing but the feedback, already pulled, reached VN-MPS


# --- 8. Group addressing: audience=members of MEKONG-DRAGON-V ---------------------------------


def test_members_at_submission_receive_a_group_alert(
    arrangements: Arrangements, world: dict[str, Any]
) -> None:
    arr = arrangements
    gdc = arr.desk("VN-GDC/fp-hcm-01")
    (op,) = [o for o in world["operations"] if o["id"] == "MEKONG-DRAGON-V"]
    others = sorted(set(op["members"]) - {"VN-GDC"})
    arr.addressable(*others)
    group: dict[str, Any] = {
        "agreement": "MEKONG-DRAGON",
        "operation": "MEKONG-DRAGON-V",
        "offence": "cites_wildlife",
        "audience": agent.MEMBERS,
        "recipients": [],  # filled in from the membership
    }
    draft = arr.compose(gdc, IVORY_REEFER, **group)
    assert draft.routing["recipients"] == others
    mid = arr.submit(gdc, draft)
    assert sorted(deliveries(arr.status(gdc, mid))) == others
    # Composed for the members of now, sent after a member joined: it would leave one out.
    stale = arr.compose(gdc, IVORY_REEFER, **group)
    newcomer = "MV-CUS"
    with arr.admin() as admin:
        admin._call(
            "POST",
            "/v1/admin/agencies",
            json={
                "id": newcomer,
                "name": "Maldives Customs Service",
                "country": "MV",
                "kind": "customs",
            },
        )
        (frame,) = [a for a in admin.get("/v1/admin/agreements") if a["id"] == "MEKONG-DRAGON"]
        doc = {**frame["document"], "parties": sorted([*frame["document"]["parties"], newcomer])}
        # Every party approves, and the newcomer consents to join.
        with httpx2.Client(base_url=arr.url) as http:
            change_agreement(http, arr.token_for, doc)
        (current,) = [o for o in admin.get("/v1/admin/operations") if o["id"] == "MEKONG-DRAGON-V"]
        doc = {
            **current["document"],
            "members": sorted([*current["document"]["members"], newcomer]),
        }
        admin._call("PUT", "/v1/admin/operations/MEKONG-DRAGON-V", json=doc)
    arr.addressable(newcomer)
    with pytest.raises(BrokerAPIError) as refused:
        arr.submit(gdc, stale)
    assert (refused.value.status, refused.value.code) == (403, "scope.audience_incomplete")
    assert newcomer in refused.value.problem["detail"]
    # The newcomer never gets the alert sent before it joined; the next one to the members, yes.
    newcomer_token = arr.token_for("agency", agency_id=newcomer)
    with BrokerClient(arr.url, newcomer_token) as client:
        assert client.inbox()["items"] == []
        later = arr.send(gdc, IVORY_REEFER, **group)
        assert [i["mid"] for i in client.inbox()["items"]] == [later]
    assert sorted(deliveries(arr.status(gdc, later))) == sorted([*others, newcomer])
    assert sorted(deliveries(arr.status(gdc, mid))) == others
