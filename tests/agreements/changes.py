"""Changing an agreement as its parties do, for tests: the administrator proposes the new
version, then each party's registrar approves it with its agency's signing key.

`http` is anything with httpx's `get`/`post` (a FastAPI TestClient, or an `httpx2.Client`
on a live broker's URL); `token_for(role, **binding)` issues tokens (the `token_for`
fixture, or `tests.hostile.conftest.make_token`).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from broker.crypto.keys import SigningKey
from broker.sdk import agreements as sdk
from tests.conftest import bearer


def registrar(token_for: Callable[..., str], agency: str) -> dict[str, str]:
    """Headers for a new registrar principal of `agency`."""
    return bearer(token_for("registrar", agency_id=agency))


def signing_key(
    http: Any, admin: dict[str, str], agency: str, signers: MutableMapping[str, SigningKey]
) -> SigningKey:
    """`agency`'s signing key from `signers`, or a new one registered in the directory."""
    if agency not in signers:
        key = SigningKey.generate()
        answer = http.post(
            "/v1/admin/keys", json={"agency_id": agency, "jwk": key.public.jwk}, headers=admin
        )
        assert answer.status_code == 201, answer.text
        signers[agency] = key
    return signers[agency]


def propose(
    http: Any, headers: dict[str, str], document: dict[str, Any], status: int = 201
) -> dict[str, Any]:
    answer = http.post(f"/v1/agreements/{document['id']}/proposals", json=document, headers=headers)
    assert answer.status_code == status, answer.text
    return dict(answer.json())


def approve(
    http: Any,
    headers: dict[str, str],
    proposal: dict[str, Any],
    agency: str,
    signer: SigningKey,
) -> Any:
    """Post `agency`'s signed approval of `proposal` (the response, unchecked)."""
    jws = sdk.sign_approval(proposal, agency, signer)
    return http.post(
        f"/v1/agreements/{proposal['agreement_id']}/proposals/{proposal['id']}/approvals",
        json={"approval": jws},
        headers=headers,
    )


def change_agreement(
    http: Any,
    token_for: Callable[..., str],
    document: dict[str, Any],
    *,
    signers: MutableMapping[str, SigningKey] | None = None,
) -> dict[str, Any]:
    """Propose `document` and approve it with every approver's registrar until it takes
    effect; returns the adopted proposal (its `version` is the new version)."""
    admin = bearer(token_for("admin"))
    signers = {} if signers is None else signers
    proposal = propose(http, admin, document)
    for agency in proposal["approvers"]:
        if proposal["status"] == "adopted":
            break
        key = signing_key(http, admin, agency, signers)
        answer = approve(http, registrar(token_for, agency), proposal, agency, key)
        assert answer.status_code == 200, answer.text
        proposal = answer.json()
    assert proposal["status"] == "adopted", proposal
    return proposal
