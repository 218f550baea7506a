"""Signed statements from agencies: one verification for every `*+jws` the broker accepts
besides envelopes (acknowledgements, recalls, recall answers, agreement approvals).

Each is a compact JWS of one `typ`, signed with a key the signed directory binds to the
party that makes the statement, valid now (`Snapshot.signing_key`, PROTOCOL 6.3), whose
payload its JSON Schema admits. The caller then checks what the payload says against the
request (the message, the proposal...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker import schemas
from broker.crypto import envelope as env
from broker.errors import BrokerError, FieldProblem
from broker.registry.snapshot import Snapshot


def verified_statement(
    snap: Snapshot,
    jws: str,
    typ: str,
    *,
    now: datetime,
    agency: str | None = None,
    focal_point: str | None = None,
    schema: str,
    member: str,
    what: str,
    not_signer: type[BrokerError],
    invalid: type[BrokerError],
) -> tuple[dict[str, Any], str]:
    """The statement's payload and key id: signed by a signing key of `agency` (or of the
    focal point `focal_point`), valid at `now`, and valid against `schema`.

    A key of another party, or none, raises `not_signer`; one of the party's own is then held
    to the validity a submit's is (revoked, retired, outside its window: their own codes). An
    invalid payload raises `invalid` ("the <what> is invalid") with each problem under
    `/<member>`. Crypto refusals
    (header, signature) raise their own `CryptoError`.
    """
    kid = env.compact_kid(jws, typ)
    key = snap.key(kid)
    owner = focal_point if focal_point is not None else agency
    if (
        key is None
        or key.use != "sig"
        or (focal_point is not None and key.focal_point_id != focal_point)
        or (agency is not None and key.agency_id != agency)
    ):
        raise not_signer(f"key {kid} is not a signing key of {owner}")
    snap.signing_key(kid, now)
    payload = env.verify_compact(jws, key.public or key.jwk, typ)
    try:
        schemas.validate(schema, payload)
    except schemas.SchemaError as exc:
        problems = [
            FieldProblem(pointer=f"/{member}{e.pointer}", detail=e.message) for e in exc.errors
        ]
        raise invalid(f"the {what} is invalid", errors=problems) from exc
    return payload, kid
