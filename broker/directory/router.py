"""The key directory: public JWKS and the admin key lifecycle."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from broker.auth import service as auth
from broker.crypto import errors as crypto_errors
from broker.deps import AnyCaller, RegistryCaller, SessionDep, StrictJSONRoute
from broker.directory import service
from broker.directory.schemas import (
    EXAMPLE_KEYS,
    EXAMPLE_REVOCATIONS,
    EXAMPLE_SIG_JWK,
    JWKSet,
    KeyIn,
    KeyOut,
    RevokeIn,
    RotateIn,
    SignedDirectory,
)
from broker.errors import (
    DuplicateId,
    Forbidden,
    ForeignAgency,
    InvalidRequest,
    NotFound,
    UnknownAgency,
    error_responses,
)

admin = APIRouter(prefix="/v1/admin/keys", tags=["admin: keys"], route_class=StrictJSONRoute)
public = APIRouter(prefix="/v1/directory", tags=["directory"], route_class=StrictJSONRoute)

_KEY_ERRORS = (
    Forbidden,
    ForeignAgency,
    DuplicateId,
    UnknownAgency,
    InvalidRequest,
    crypto_errors.InvalidKey,
    crypto_errors.WrongCurve,
    crypto_errors.PrivateMaterial,
    crypto_errors.WrongUse,
    crypto_errors.LowOrderKey,
    crypto_errors.KeyKidMismatch,
    service.KeyBinding,
    service.BadValidity,
)


@admin.post("", status_code=201, responses=error_responses(*_KEY_ERRORS))
async def register_key(
    data: Annotated[
        KeyIn,
        Body(
            openapi_examples={
                "signing": {
                    "summary": "a focal point's Ed25519 signing key",
                    "value": EXAMPLE_KEYS["signing"],
                },
                "encryption": {
                    "summary": "an agency's X25519 encryption key",
                    "value": EXAMPLE_KEYS["encryption"],
                },
            }
        ),
    ],
    caller: RegistryCaller,
    session: SessionDep,
) -> KeyOut:
    """Register a public key (OKP Ed25519 for signing, X25519 for encryption); a registrar
    registers its own agency's and its focal points' keys only."""
    key = await service.register(session, data, actor=caller.actor, within=auth.confinement(caller))
    return KeyOut.model_validate(key)


@admin.get("", responses=error_responses(Forbidden, ForeignAgency))
async def list_keys(
    caller: RegistryCaller, session: SessionDep, agency: str | None = None
) -> list[KeyOut]:
    """Every key, optionally of one agency (a registrar: its own agency's only)."""
    agency = auth.filter_within(caller, agency)
    return [KeyOut.model_validate(k) for k in await service.list_keys(session, agency_id=agency)]


@admin.get("/{kid}", responses=error_responses(Forbidden, ForeignAgency, NotFound))
async def get_key(kid: str, caller: RegistryCaller, session: SessionDep) -> KeyOut:
    """One key with its status."""
    return KeyOut.model_validate(await service.get(session, kid, within=auth.confinement(caller)))


@admin.post("/{kid}/rotate", status_code=201, responses=error_responses(*_KEY_ERRORS, NotFound))
async def rotate_key(
    kid: str,
    data: Annotated[
        RotateIn,
        Body(
            openapi_examples={
                "signing": {
                    "summary": "the successor signing key",
                    "value": {"jwk": EXAMPLE_SIG_JWK},
                }
            }
        ),
    ],
    caller: RegistryCaller,
    session: SessionDep,
) -> KeyOut:
    """Register the successor of a key and retire the old one."""
    key = await service.rotate(
        session, kid, data, actor=caller.actor, within=auth.confinement(caller)
    )
    return KeyOut.model_validate(key)


@admin.post(
    "/{kid}/retire",
    responses=error_responses(Forbidden, ForeignAgency, NotFound, service.KeyNotActive),
)
async def retire_key(kid: str, caller: RegistryCaller, session: SessionDep) -> KeyOut:
    """Retire a key: no new use; past signatures stay valid."""
    key = await service.retire(session, kid, actor=caller.actor, within=auth.confinement(caller))
    return KeyOut.model_validate(key)


@admin.post(
    "/{kid}/revoke",
    responses=error_responses(
        Forbidden,
        ForeignAgency,
        NotFound,
        service.KeyNotActive,
        service.BadValidity,
        crypto_errors.InvalidKey,
    ),
)
async def revoke_key(
    kid: str,
    data: Annotated[
        RevokeIn,
        Body(
            openapi_examples={
                name: {"summary": f"revoked: {name}", "value": value}
                for name, value in EXAMPLE_REVOCATIONS.items()
            }
        ),
    ],
    caller: RegistryCaller,
    session: SessionDep,
) -> KeyOut:
    """Revoke a key, with `compromised_since` for a key compromise."""
    key = await service.revoke(
        session, kid, data, actor=caller.actor, within=auth.confinement(caller)
    )
    return KeyOut.model_validate(key)


@public.get(
    "",
    summary="Signed key directory (JWS)",
    response_model=SignedDirectory,
    responses=error_responses(Forbidden),
)
async def signed_directory(caller: AnyCaller, session: SessionDep) -> SignedDirectory:
    """The JWK Set as a compact JWS signed by the broker's receipt key, with a version that
    only grows. Verify it with the receipt key you pinned at onboarding (also shown by
    `GET /v1/directory/broker`), check `typ: key-directory+jws` and `expires_at`, and refuse
    a version lower than one you have seen. Unchanged keys give the same bytes to every caller
    until half of the directory's lifetime has passed; each version's SHA-256 is on the log
    (`directory.published`)."""
    return SignedDirectory(directory=(await service.signed_directory(session)).jws)


@public.get(
    "/jwks",
    summary="Key directory (JWK Set)",
    response_model=JWKSet,
    responses=error_responses(Forbidden),
)
async def jwks(caller: AnyCaller, session: SessionDep, agency: str | None = None) -> dict[str, Any]:
    """RFC 7517 JWK Set with status, validity and revocation metadata on each key."""
    return await service.jwks(session, agency_id=agency)


@public.get("/broker", summary="The broker's keys", responses=error_responses(Forbidden))
async def broker_keys(caller: AnyCaller, session: SessionDep) -> dict[str, Any]:
    """The broker's own public keys: receipt signing JWK and transparency-log verifier key.

    `receipt_keys` and `log_keys` add the retired ones with their validity (`valid_from`,
    `valid_until`, epoch ms; for log keys the tree sizes they signed), so receipts and
    checkpoints signed before a rotation still verify; `rotations` are the `log.key_rotated`
    leaves with the statements the retired keys signed (docs/protocol.md).
    """
    from broker import keyring
    from broker.audit import keyrotation

    keys = keyring.load_or_create()
    return {
        "receipt_key": keys.receipt.public.jwk,
        "log_key": keys.log_verifier_key,
        "log_origin": keys.log_origin,
        **await keyrotation.published(session),
    }
