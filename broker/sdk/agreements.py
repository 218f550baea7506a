"""A registrar's side of agreement changes: see what is proposed, sign the approval.

The approval is an `agreement-approval+jws` (docs/protocol.md, "Agreement approvals") signed
with a signing key of the registrar's agency. It signs the hash of the document the registrar
was shown, recomputed here (RFC 8785 JCS, SHA-256): an approval never rests on the hash the
broker states alone.
"""

from __future__ import annotations

import difflib
import json
import time
from typing import Any

from broker import schemas
from broker.crypto import envelope as env
from broker.crypto import keys
from broker.crypto.jcs import canonical
from broker.sdk.client import BrokerClient


class ProposalMismatch(ValueError):
    """The proposed document does not hash to the `policy_sha256` the broker states."""


def policy_sha256(document: dict[str, Any]) -> str:
    """base64url SHA-256 of the JCS-canonical document (the hash the log records)."""
    return keys.sha256_b64u(canonical(document))


def approval_statement(
    *, agreement: str, proposal: str, policy_sha256: str, agency: str, iat: int | None = None
) -> dict[str, Any]:
    """The approval payload, valid against `agreement-approval.json` (SchemaError if not)."""
    payload: dict[str, Any] = {
        "v": 1,
        "agreement": agreement,
        "proposal": proposal,
        "policy_sha256": policy_sha256,
        "agency": agency,
        "iat": int(time.time()) if iat is None else iat,
    }
    schemas.validate("agreement-approval", payload)
    return payload


def sign_approval(proposal: dict[str, Any], agency: str, signer: keys.SigningKey) -> str:
    """The signed approval of `proposal` (as the broker lists it) for `agency`, after checking
    that its document hashes to its stated `policy_sha256` (ProposalMismatch if not)."""
    digest = policy_sha256(proposal["document"])
    if digest != proposal["policy_sha256"]:
        raise ProposalMismatch(
            f"proposal {proposal['id']}: the document hashes to {digest}, "
            f"not the stated {proposal['policy_sha256']}"
        )
    payload = approval_statement(
        agreement=proposal["agreement_id"],
        proposal=str(proposal["id"]),
        policy_sha256=digest,
        agency=agency,
    )
    return env.sign_compact(payload, signer, env.TYP_AGREEMENT_APPROVAL)


def approve(
    client: BrokerClient, signer: keys.SigningKey, proposal: dict[str, Any], agency: str
) -> dict[str, Any]:
    """Sign and post `agency`'s approval of `proposal`; returns the proposal as it then stands
    (`status` `adopted` when this approval completed it)."""
    jws = sign_approval(proposal, agency, signer)
    return client.approve_agreement_change(proposal["agreement_id"], str(proposal["id"]), jws)


def diff(base: dict[str, Any], proposed: dict[str, Any]) -> list[str]:
    """The proposed document against the version it changes, as unified-diff lines."""

    def lines(document: dict[str, Any]) -> list[str]:
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return list(
        difflib.unified_diff(lines(base), lines(proposed), "current", "proposed", lineterm="", n=2)
    )
