"""Witnesses over the API: registration, cosignatures accepted strictly and idempotently, and
checkpoints served with their cosignature lines (C2SP tlog-cosignature)."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from sqlalchemy import select

from broker import schemas
from broker.audit.models import AuditEvent, Cosignature
from broker.crypto import note
from tests.audit.conftest import decode, leaves_of, record, scalars, sequence_all
from tests.conftest import bearer

HK, VN = "HK-CED", "VN-GDC"


def register(api: Any, admin: dict[str, str], name: str, agency: str) -> note.Cosigner:
    """A new witness key of `agency`, registered by the administrator."""
    signer = note.Cosigner.generate(name)
    response = api.post(
        "/v1/admin/witnesses", json={"vkey": signer.verifier_key, "agency": agency}, headers=admin
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name
    return signer


def cosign(api: Any, headers: dict[str, str], signer: note.Cosigner, when: int | None = None,
           *, size: int | None = None) -> tuple[Any, str]:  # fmt: skip
    """Fetch a checkpoint, cosign it and send it back: (the answer, the line)."""
    params = {"size": size} if size else {}
    served = api.get("/v1/log/checkpoint", params=params, headers=headers).text
    line = note.cosign(served, signer, int(time.time()) if when is None else when)
    body = {"checkpoint": note.add_signatures(served, [line])}
    return api.post("/v1/log/cosignatures", json=body, headers=headers), line


@pytest.fixture
def parties(api: Any, world: dict[str, Any], token_for: Any) -> dict[str, dict[str, str]]:
    sequence_all()
    return {
        "admin": bearer(token_for("admin")),
        HK: bearer(token_for("agency", agency_id=HK)),
        VN: bearer(token_for("agency", agency_id=VN)),
        "auditor": bearer(token_for("auditor")),
    }


class TestRegistration:
    def test_register_list_retire(self, api: Any, parties: dict[str, dict[str, str]]) -> None:
        signer = register(api, parties["admin"], "hk-ced.example/witness", HK)
        listed = api.get("/v1/log/witnesses", headers=parties["auditor"])
        assert listed.status_code == 200
        assert [(w["name"], w["vkey"], w["agency"], w["status"]) for w in listed.json()] == [
            (signer.name, signer.verifier_key, HK, "active")
        ]
        again = api.post(
            "/v1/admin/witnesses",
            json={"vkey": signer.verifier_key, "agency": HK},
            headers=parties["admin"],
        )
        assert (again.status_code, again.json()["code"]) == (409, "registry.duplicate_id")
        retired = api.post(
            "/v1/admin/witnesses/retire", json={"name": signer.name}, headers=parties["admin"]
        )
        assert (retired.status_code, retired.json()["status"]) == (200, "retired")
        response, _ = cosign(api, parties[HK], signer)
        assert (response.status_code, response.json()["code"]) == (403, "log.witness_unknown")
        events = scalars(select(AuditEvent).where(AuditEvent.kind == "admin.changed"))
        actions = [e.details.get("action") for e in events]
        assert "witness.registered" in actions
        assert "witness.retired" in actions

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"vkey": "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
              "agency": HK}, "log.witness_key_invalid"),  # a note key (type 0x01)
            ({"vkey": "not a key", "agency": HK}, "log.witness_key_invalid"),
            ({"vkey": note.Cosigner.generate("w").verifier_key, "agency": "XX-NONE"},
             "registry.unknown_agency"),
        ],
    )  # fmt: skip
    def test_bad_registrations(
        self, api: Any, parties: dict[str, dict[str, str]], body: dict[str, str], code: str
    ) -> None:
        response = api.post("/v1/admin/witnesses", json=body, headers=parties["admin"])
        assert response.json()["code"] == code, response.text


class TestCosignatures:
    def test_accepted_served_and_idempotent(
        self, api: Any, parties: dict[str, dict[str, str]], log_key: str
    ) -> None:
        signer = register(api, parties["admin"], "hk-ced.example/witness", HK)
        sequence_all()  # the registration's event: a new checkpoint
        t = int(time.time())
        response, line = cosign(api, parties[HK], signer, t)
        assert response.status_code == 200, response.text
        (stored,) = response.json()["cosignatures"]
        size = stored["size"]
        assert stored == {"size": size, "witness": signer.name, "timestamp": t, "line": line}
        # A retry: the same answer, and no second event.
        body = {"checkpoint": api.get("/v1/log/checkpoint", params={"size": size},
                                      headers=parties[HK]).text}  # fmt: skip
        assert line in body["checkpoint"]
        retry = api.post("/v1/log/cosignatures", json=body, headers=parties[HK])
        assert (retry.status_code, retry.json()) == (200, response.json())
        events = scalars(select(AuditEvent).where(AuditEvent.kind == "log.cosigned"))
        assert [(e.subject, e.details) for e in events] == [
            (HK, {"agency": HK, "witness": signer.name, "size": size, "cosigned_at": t})
        ]
        # Served with the checkpoint; the log key still verifies it, and so does the witness's.
        sequence_all()
        one = api.get("/v1/log/checkpoint", params={"size": size}, headers=parties["auditor"])
        assert one.headers["content-type"].startswith("text/plain")
        verifier = note.parse_cosigner_vkey(signer.verifier_key)
        assert note.verify_cosignature(one.text, verifier) == t
        assert note.verify_checkpoint(one.text, note.parse_verifier_key(log_key)).size == size
        latest = api.get("/v1/log/checkpoint", headers=parties["auditor"]).text
        assert note.Checkpoint.parse(latest.split("\n\n")[0] + "\n").size > size
        assert line not in latest
        cosigned = api.get("/v1/log/checkpoint", params={"cosigned": 1}, headers=parties[VN])
        assert cosigned.text == one.text
        none = api.get("/v1/log/checkpoint", params={"cosigned": 2}, headers=parties[VN])
        assert (none.status_code, none.json()["code"]) == (404, "log.not_cosigned")
        # A newer time replaces the line; an older one leaves it.
        newer, newer_line = cosign(api, parties[HK], signer, t + 10, size=size)
        assert newer.json()["cosignatures"][0]["line"] == newer_line
        older, _ = cosign(api, parties[HK], signer, t - 10, size=size)
        assert older.json()["cosignatures"][0]["line"] == newer_line
        lines = scalars(select(Cosignature.line))
        assert lines == [newer_line]
        # One leaf for the witness and checkpoint, valid under the published leaf schema.
        sequence_all()
        leaves = [decode(x) for x in leaves_of(api, parties[HK])]
        (cosigned_leaf,) = [x for x in leaves if x["kind"] == "log.cosigned"]
        schemas.validate("log-leaf", cosigned_leaf)
        assert (cosigned_leaf["witness"], cosigned_leaf["size"]) == (signer.name, size)

    def test_refusals(self, api: Any, parties: dict[str, dict[str, str]]) -> None:
        hk = register(api, parties["admin"], "hk-ced.example/witness", HK)
        sequence_all()
        served = api.get("/v1/log/checkpoint", headers=parties[HK]).text
        size = note.Checkpoint.parse(served.split("\n\n")[0] + "\n").size
        now = int(time.time())

        def send(text: str, who: str = HK) -> tuple[int, str]:
            r = api.post("/v1/log/cosignatures", json={"checkpoint": text}, headers=parties[who])
            return r.status_code, r.json().get("code")

        good = note.add_signatures(served, [note.cosign(served, hk, now)])
        # Another agency's token: HK-CED's witness is not VN-GDC's.
        assert send(good, VN) == (403, "log.witness_unknown")
        # An unregistered key of the same name.
        impostor = note.Cosigner.generate(hk.name)
        assert send(note.add_signatures(served, [note.cosign(served, impostor, now)])) == (
            403,
            "log.witness_unknown",
        )
        # A bad signature by the registered key.
        line = note.cosign(served, hk, now)
        raw = bytearray(base64.b64decode(line.split(" ")[2]))
        raw[-1] ^= 1
        bad = f"{note.SIG_PREFIX}{hk.name} {base64.b64encode(bytes(raw)).decode()}"
        assert send(note.add_signatures(served, [bad])) == (422, "log.cosignature_invalid")
        # Too far ahead of the broker's clock (within five minutes is fine).
        assert send(note.add_signatures(served, [note.cosign(served, hk, now + 600)])) == (
            422,
            "log.cosignature_future",
        )
        # Another text for this size (a forged root), an unknown size, and no note at all.
        root = bytes(32)
        forged_text = note.Checkpoint(served.split("\n")[0], size, root).format()
        forged = forged_text + "\n" + served.split("\n\n")[1]
        forged = note.add_signatures(forged, [note.cosign(forged_text, hk, now)])
        assert send(forged) == (422, "log.checkpoint_mismatch")
        unknown_text = note.Checkpoint(served.split("\n")[0], size + 1000, root).format()
        unknown = note.add_signatures(
            unknown_text + "\n" + served.split("\n\n")[1], [note.cosign(unknown_text, hk, now)]
        )
        assert send(unknown) == (404, "log.checkpoint_unknown")
        assert send("not a note") == (422, "log.checkpoint_mismatch")
        one = api.get("/v1/log/checkpoint", params={"size": size + 1000}, headers=parties[VN])
        assert (one.status_code, one.json()["code"]) == (404, "log.checkpoint_unknown")
        both = api.get(
            "/v1/log/checkpoint", params={"size": size, "cosigned": 1}, headers=parties[VN]
        )
        assert (both.status_code, both.json()["code"]) == (422, "request.invalid")
        assert send(good) == (200, None)

    def test_two_witnesses_make_a_checkpoint_cosigned_twice(
        self, api: Any, parties: dict[str, dict[str, str]]
    ) -> None:
        hk = register(api, parties["admin"], "hk-ced.example/witness", HK)
        vn = register(api, parties["admin"], "vn-gdc.example/witness", VN)
        sequence_all()
        size = note.Checkpoint.parse(
            api.get("/v1/log/checkpoint", headers=parties[HK]).text.split("\n\n")[0] + "\n"
        ).size
        assert cosign(api, parties[HK], hk, size=size)[0].status_code == 200
        record(3)
        sequence_all()
        assert cosign(api, parties[VN], vn, size=size)[0].status_code == 200
        both = api.get("/v1/log/checkpoint", params={"cosigned": 2}, headers=parties["auditor"])
        assert both.status_code == 200
        for signer in (hk, vn):
            assert note.verify_cosignature(both.text, note.parse_cosigner_vkey(signer.verifier_key))
