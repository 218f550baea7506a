"""An exchange harness: the demo world with keys for every focal point and agency."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from broker import db
from broker.crypto import envelope as env
from broker.crypto.keys import EncryptionKey, SigningKey
from broker.directory import service as directory
from broker.directory.schemas import KeyIn
from tests.conftest import bearer

BODY = {
    "title": "Suspected ivory in a reefer container",
    "summary": "Declared as frozen fish; X-ray anomalies consistent with tusks.",
    "subjects": [],
}


@dataclass
class Exchange:
    """Keys, tokens and envelope building for the world of ARCHITECTURE.md section 2."""

    client: Any
    token_for: Any
    signing: dict[str, SigningKey] = field(default_factory=dict)
    encryption: dict[str, EncryptionKey] = field(default_factory=dict)
    agency_signing: dict[str, SigningKey] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def fp_headers(self, fp: str) -> dict[str, str]:
        if fp not in self.tokens:
            self.tokens[fp] = self.token_for("focal_point", focal_point_id=fp)
        return bearer(self.tokens[fp])

    def agency_headers(self, agency: str) -> dict[str, str]:
        key = "agency:" + agency
        if key not in self.tokens:
            self.tokens[key] = self.token_for("agency", agency_id=agency)
        return bearer(self.tokens[key])

    def routing(self, fp: str = "VN-GDC/fp-hcm-01", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        routing: dict[str, Any] = {
            "v": 1,
            "kind": "alert",
            "mid": str(uuid7()),
            "iat": now,
            "exp": now + 7 * 86400,
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
        routing.update(overrides)
        return routing

    def envelope(
        self,
        routing: dict[str, Any],
        body: dict[str, Any] | None = None,
        signer: SigningKey | None = None,
    ) -> str:
        keys = {r: self.encryption[r].public for r in routing["recipients"]}
        return env.build_envelope(
            routing, body or BODY, signer or self.signing[routing["sender_fp"]], keys
        )

    def submit(
        self,
        envelope: str,
        routing: dict[str, Any],
        *,
        fp: str | None = None,
        idempotency_key: str | None = "mid",
    ) -> Any:
        headers = self.fp_headers(fp or routing["sender_fp"])
        if idempotency_key == "mid":
            headers["Idempotency-Key"] = routing["mid"]
        elif idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self.client.post("/v1/messages", json={"envelope": envelope}, headers=headers)

    def send(self, **overrides: Any) -> tuple[Any, dict[str, Any], str]:
        fp = overrides.pop("fp", "VN-GDC/fp-hcm-01")
        routing = self.routing(fp, **overrides)
        envelope = self.envelope(routing)
        return self.submit(envelope, routing), routing, envelope

    def ack(
        self,
        agency: str,
        mid: str,
        envelope: str,
        status: str = "decrypted",
        reason: str | None = None,
    ) -> Any:
        payload: dict[str, Any] = {
            "v": 1,
            "mid": mid,
            "envelope_sha256": _sha(envelope),
            "status": status,
            "at": int(time.time() * 1000),
        }
        if reason:
            payload["reason"] = reason
        jws = env.sign_compact(payload, self.agency_signing[agency], env.TYP_ACK)
        return self.client.post(
            f"/v1/inbox/{mid}/ack", json={"ack": jws}, headers=self.agency_headers(agency)
        )


def _sha(text: str) -> str:
    from broker.crypto.keys import sha256_b64u

    return sha256_b64u(text.encode())


@pytest.fixture
def exchange(client: Any, world: dict[str, Any], token_for: Any) -> Exchange:
    """Register a signing key per focal point, an encryption and a signing key per agency."""
    return register_world_keys(Exchange(client=client, token_for=token_for), world)


def register_world_keys(ex: Exchange, world: dict[str, Any]) -> Exchange:
    """A new signing key per focal point, encryption and signing keys per agency, registered."""

    async def register(s: AsyncSession) -> None:
        for fp in world["focal_points"]:
            key = ex.signing[fp["id"]] = SigningKey.generate()
            await directory.register(
                s,
                KeyIn(
                    agency_id=fp["id"].split("/")[0], focal_point_id=fp["id"], jwk=key.public.jwk
                ),
                actor="test",
            )
        for agency in world["agencies"]:
            enc = ex.encryption[agency["id"]] = EncryptionKey.generate()
            await directory.register(
                s, KeyIn(agency_id=agency["id"], jwk=enc.public.jwk), actor="test"
            )
            sig = ex.agency_signing[agency["id"]] = SigningKey.generate()
            await directory.register(
                s, KeyIn(agency_id=agency["id"], jwk=sig.public.jwk), actor="test"
            )

    db.call(register)
    return ex


def relay(timeout_s: float = 10.0) -> int:
    """Run the delivery relay now (the ticker would within a second), and wait while the app's
    own ticker holds due rows: the relay skips locked rows, so a row the ticker is relaying at
    that moment is delivered only when the ticker commits."""
    from broker.inbox import jobs

    done = jobs.relay()
    deadline = time.monotonic() + timeout_s
    while db.call(_due_deliver_rows) and time.monotonic() < deadline:
        time.sleep(0.02)
        done += jobs.relay()
    return done


async def _due_deliver_rows(s: AsyncSession) -> int:
    """Pending `deliver` rows that are due (a row waiting out a backoff is not)."""
    from sqlalchemy import func, or_, select

    from broker.ids import utcnow
    from broker.messages.models import OUTBOX_DELIVER, Outbox

    stmt = select(func.count()).where(
        Outbox.topic == OUTBOX_DELIVER,
        Outbox.done_at.is_(None),
        Outbox.dead_at.is_(None),
        or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= utcnow()),
    )
    return int((await s.execute(stmt)).scalar_one())


def seizure_feedback(ex: Exchange, in_reply_to: str) -> dict[str, Any]:
    """HK-CED's focal point reports to VN-GDC a seizure on a Mekong Dragon alert."""
    return ex.routing(
        "HK-CED/fp-01",
        kind="feedback",
        recipients=["VN-GDC"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="narcotics",
        subject_types=["seizure"],
        in_reply_to=in_reply_to,
        outcome="seized",
        commodity="narcotics",
        quantity_band="10_100kg",
    )


def new_mid() -> str:
    return str(uuid.UUID(str(uuid7())))
