"""A harness for the arrangements of the demo world, driven as the agencies drive them: keys in
an agency-side keystore, the real SDK, real HTTP against a live broker.

Only the agencies a test involves get keys (`desk`), so a test stays fast; recipients that are
only counted, never opened, get an encryption key held in memory (`addressable`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker import keyring
from broker.crypto import keys
from broker.sdk import agent
from broker.sdk.agent import InboxPuller, Pulled
from broker.sdk.client import BrokerClient
from broker.sdk.keystore import Keystore


@dataclass(frozen=True)
class Desk:
    """One agency as a test drives it: its focal point sends, its agency token pulls."""

    agency: str
    fp: str
    fp_token: str
    agency_token: str
    state: Path


@dataclass
class Arrangements:
    url: str
    token_for: Any
    store: Keystore
    tmp: Path
    admin_token: str
    desks: dict[str, Desk] = field(default_factory=dict)

    def admin(self) -> BrokerClient:
        return BrokerClient(self.url, self.admin_token)

    def _register(self, owner: str, jwk: dict[str, Any]) -> None:
        body = {
            "agency_id": owner.split("/")[0],
            "focal_point_id": owner if "/" in owner else None,
            "jwk": jwk,
        }
        with self.admin() as client:
            assert client._call("POST", "/v1/admin/keys", json=body)["status"] == "active"

    def _generate(self, owner: str, use: str) -> None:
        _, key = self.store.generate(owner, use)
        self._register(owner, key.public.jwk)

    def desk(self, fp: str) -> Desk:
        """Keys for a focal point (signing) and its agency (encryption, and signing its acks),
        generated in the keystore and registered; tokens for both."""
        if fp in self.desks:
            return self.desks[fp]
        agency = fp.split("/")[0]
        self._generate(fp, "sig")
        if not self.store.stored_keys(agency):
            self._generate(agency, "enc")
            self._generate(agency, "sig")
        desk = Desk(
            agency=agency,
            fp=fp,
            fp_token=self.token_for("focal_point", focal_point_id=fp),
            agency_token=self.token_for("agency", agency_id=agency),
            state=self.tmp / "inbox" / agency,
        )
        self.desks[fp] = desk
        return desk

    def addressable(self, *agencies: str) -> None:
        """An encryption key in the directory for each agency, its private half discarded: the
        agency can be addressed (and counted), though nothing of it is opened here."""
        for agency in agencies:
            self._register(agency, keys.EncryptionKey.generate().public.jwk)

    def client(self, desk: Desk, *, as_agency: bool = False) -> BrokerClient:
        return BrokerClient(self.url, desk.agency_token if as_agency else desk.fp_token)

    def compose(self, desk: Desk, body: dict[str, Any], **fields: Any) -> agent.Draft:
        with self.client(desk) as client:
            return agent.compose(
                client, self.store.signing_key(desk.fp), sender_fp=desk.fp, body=body, **fields
            )

    def submit(self, desk: Desk, draft: agent.Draft) -> str:
        """Send a draft, then run the delivery relay so that its recipients can pull it."""
        from tests.messages.conftest import relay

        with self.client(desk) as client:
            answer = agent.send(client, draft)
        assert answer["mid"] == draft.mid
        relay()
        return draft.mid

    def send(self, desk: Desk, body: dict[str, Any], **fields: Any) -> str:
        """Compose (with the broker's dry run first), send and relay an alert."""
        return self.submit(desk, self.compose(desk, body, **fields))

    def pull(self, desk: Desk) -> list[Pulled]:
        """Pull, prove in the log (the broker's log key pinned), open, verify, keep, acknowledge."""
        log_key = keyring.load_or_create().log_verifier_key
        with self.client(desk, as_agency=True) as client:
            puller = InboxPuller(client, self.store, desk.agency, desk.state, log_key=log_key)
            return puller.pull()

    def opened(self, desk: Desk, mid: str) -> dict[str, Any]:
        """The only message pulled: its mid, status, and what it said (routing and body)."""
        (got,) = self.pull(desk)
        assert (got.mid, got.status, got.reason) == (mid, "decrypted", None), got.detail
        assert got.folder is not None
        message: dict[str, Any] = json.loads((got.folder / "alert.json").read_text())
        return message

    def answer(
        self,
        desk: Desk,
        alert: dict[str, Any],
        body: dict[str, Any],
        *,
        outcome: str,
        subject_types: list[str] | None = None,
        dry_run_first: bool = True,
        **extra: Any,
    ) -> str:
        """Feedback on an opened alert, as `broker feedback` builds it: to the alert's sender,
        under its agreement and operation, its offence and handling; outcome in the routing."""
        routing = alert["routing"]
        seizures = body.get("seizures", [])
        if seizures and "commodity" not in extra:
            extra["commodity"] = seizures[0]["commodity"]
        band = agent.quantity_band(seizures[0].get("quantity") if seizures else None)
        if band and "quantity_band" not in extra:
            extra["quantity_band"] = band
        body = {**body, "references": [routing["mid"]]}
        draft = self.compose(
            desk,
            body,
            kind="feedback",
            recipients=[routing["sender"]],
            agreement=routing["agreement"],
            operation=routing["operation"],
            offence=routing["offence"],
            subject_types=subject_types or (["seizure"] if seizures else routing["subject_types"]),
            handling=routing["handling"],
            dry_run_first=dry_run_first,
            extra={"in_reply_to": routing["mid"], "outcome": outcome, **extra},
        )
        return self.submit(desk, draft)

    def status(self, desk: Desk, mid: str) -> dict[str, Any]:
        """`GET /v1/messages/{mid}` as the sender's focal point sees it."""
        with self.client(desk) as client:
            return client.status(mid)


def deliveries(status: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """Each recipient's delivery state and the mids of its feedback."""
    return {d["recipient"]: (d["state"], d["feedback"]) for d in status["deliveries"]}


@pytest.fixture
def arrangements(
    live_url: str,
    world: dict[str, Any],
    token_for: Any,
    tmp_path: Path,
) -> Arrangements:
    store = Keystore(tmp_path / "keys", keys.generate_passphrase())
    return Arrangements(live_url, token_for, store, tmp_path, token_for("admin"))
