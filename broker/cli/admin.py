"""`broker admin ...`: the registrar's commands, run on the broker host against its database."""

from __future__ import annotations

import getpass
import uuid
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from broker.cli.common import DataDir, call, fail, print_json, read_json, validated

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

app = typer.Typer(no_args_is_help=True, help="Registry and access administration.")
agency_app = typer.Typer(no_args_is_help=True, help="Agencies.")
fp_app = typer.Typer(no_args_is_help=True, help="Focal points and designations.")
key_app = typer.Typer(no_args_is_help=True, help="Public keys: register, rotate, retire, revoke.")
agreement_app = typer.Typer(no_args_is_help=True, help="Agreements (versioned policy documents).")
operation_app = typer.Typer(no_args_is_help=True, help="Operations.")
token_app = typer.Typer(no_args_is_help=True, help="Principals and API tokens.")
app.add_typer(agency_app, name="agency")
app.add_typer(fp_app, name="focal-point")
app.add_typer(key_app, name="key")
app.add_typer(agreement_app, name="agreement")
app.add_typer(operation_app, name="operation")
app.add_typer(token_app, name="token")

JsonFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON document")]
ROLES = ("focal_point", "agency", "registrar", "auditor", "admin")


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _dump(rows: Any) -> None:
    from pydantic import BaseModel

    def one(row: Any) -> Any:
        if isinstance(row, BaseModel):
            return row.model_dump(mode="json")
        return {c: getattr(row, c) for c in row.__table__.columns.keys()}  # noqa: SIM118

    print_json([one(r) for r in rows] if isinstance(rows, list | tuple) else one(rows))


def _document(path: Path, what: str) -> dict[str, Any]:
    doc = read_json(path, what)
    if not isinstance(doc, dict):
        fail(f"{what}: {path} holds a JSON {type(doc).__name__}, not an object: fix the file")
    return doc


@app.command("load-world")
def load_world(
    file: Annotated[
        Path | None, typer.Argument(help="World JSON (default: the demo world)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create agencies, focal points, agreements, designations and operations from a file."""
    from broker import world

    doc = _document(file, "FILE") if file else world.demo_world()
    loaded = call(data_dir, world.load_world, doc, actor=_actor())
    print_json({"created": loaded.created, "skipped": loaded.skipped})


@agency_app.command("create")
def agency_create(
    agency_id: str,
    name: Annotated[str, typer.Option()],
    country: Annotated[
        str | None,
        typer.Option(help="ISO 3166-1 alpha-2; leave out for an international body (INT- id)"),
    ] = None,
    kind: Annotated[str, typer.Option()] = "customs",
    data_dir: DataDir = None,
) -> None:
    """Register an agency."""
    from broker.agencies import service
    from broker.agencies.schemas import AgencyIn

    data = validated(
        AgencyIn,
        {"id": agency_id, "name": name, "country": country, "kind": kind},
        {"id": "AGENCY_ID"},
    )
    _dump(call(data_dir, service.create_agency, data, actor=_actor()))


@agency_app.command("list")
def agency_list(data_dir: DataDir = None) -> None:
    """List agencies."""
    from broker.agencies import service

    _dump(list(call(data_dir, service.list_agencies)))


Reason = Annotated[
    str, typer.Option("--reason", help="Why (1-200 characters); goes on the log, no personal data")
]


def _reason(reason: str) -> str:
    from broker.agencies.schemas import StatusChangeIn

    return validated(StatusChangeIn, {"reason": reason}, {"reason": "--reason"}).reason


@agency_app.command("suspend")
def agency_suspend(agency_id: str, reason: Reason, data_dir: DataDir = None) -> None:
    """Suspend an agency: its tokens are refused, its focal points may not submit, and
    deliveries to it wait until it is reactivated."""
    from broker.agencies import service

    why = _reason(reason)
    _dump(call(data_dir, service.suspend_agency, agency_id, reason=why, actor=_actor()))


@agency_app.command("reactivate")
def agency_reactivate(agency_id: str, reason: Reason, data_dir: DataDir = None) -> None:
    """Reactivate a suspended agency; the deliveries held meanwhile arrive in order."""
    from broker.agencies import service

    why = _reason(reason)
    _dump(call(data_dir, service.reactivate_agency, agency_id, reason=why, actor=_actor()))


@fp_app.command("create")
def fp_create(
    focal_point_id: str,
    name: Annotated[str, typer.Option()],
    role: Annotated[str, typer.Option()] = "focal point",
    locality: Annotated[
        str | None, typer.Option(help="The border crossing, port or province it serves")
    ] = None,
    subdivision: Annotated[
        str | None, typer.Option(help="ISO 3166-2 code of the locality, e.g. VN-02")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a focal point (`AGENCY/slug`)."""
    from broker.agencies import service
    from broker.agencies.schemas import FocalPointIn

    fields = {"id": focal_point_id, "name": name, "role": role}
    where = {"locality": locality, "subdivision": subdivision}
    data = validated(
        FocalPointIn,
        fields | {k: v for k, v in where.items() if v is not None},
        {"id": "FOCAL_POINT_ID"},
    )
    agency = focal_point_id.split("/")[0]
    _dump(call(data_dir, service.create_focal_point, agency, data, actor=_actor()))


@fp_app.command("list")
def fp_list(agency: Annotated[str | None, typer.Option()] = None, data_dir: DataDir = None) -> None:
    """List focal points."""
    from broker.agencies import service

    _dump(list(call(data_dir, service.list_focal_points, agency)))


@fp_app.command("designate")
def fp_designate(
    focal_point_id: str,
    agreement: str,
    valid_from: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"])],
    valid_until: Annotated[datetime | None, typer.Option("--until", formats=["%Y-%m-%d"])] = None,
    data_dir: DataDir = None,
) -> None:
    """Designate a focal point under an agreement for a period."""
    from broker.agreements import service
    from broker.agreements.schemas import DesignationIn

    data = validated(
        DesignationIn,
        {
            "agreement": agreement,
            "valid_from": valid_from.date(),
            "valid_until": valid_until.date() if valid_until else None,
        },
        {"agreement": "AGREEMENT", "valid_from": "--from", "valid_until": "--until"},
    )
    _dump(call(data_dir, service.designate, focal_point_id, data, actor=_actor()))


@fp_app.command("suspend")
def fp_suspend(focal_point_id: str, reason: Reason, data_dir: DataDir = None) -> None:
    """Suspend a focal point (`AGENCY/slug`): its tokens are refused and it may not submit."""
    from broker.agencies import service

    why = _reason(reason)
    _dump(call(data_dir, service.suspend_focal_point, focal_point_id, reason=why, actor=_actor()))


@fp_app.command("reactivate")
def fp_reactivate(focal_point_id: str, reason: Reason, data_dir: DataDir = None) -> None:
    """Put a suspended focal point back in service."""
    from broker.agencies import service

    why = _reason(reason)
    _dump(
        call(data_dir, service.reactivate_focal_point, focal_point_id, reason=why, actor=_actor())
    )


@fp_app.command("end-designation")
def fp_end_designation(
    focal_point_id: str,
    agreement: str,
    valid_until: Annotated[
        datetime, typer.Option("--until", formats=["%Y-%m-%d"], help="Last day (inclusive)")
    ],
    reason: Reason,
    data_dir: DataDir = None,
) -> None:
    """End the designation under AGREEMENT that covers --until on that day."""
    from broker.agreements import service
    from broker.agreements.schemas import DesignationEndIn

    data = validated(
        DesignationEndIn,
        {"valid_until": valid_until.date(), "reason": reason},
        {"valid_until": "--until", "reason": "--reason"},
    )
    _dump(call(data_dir, service.end_designation, focal_point_id, agreement, data, actor=_actor()))


@key_app.command("register")
def key_register(
    jwk_file: JsonFile,
    agency: Annotated[str, typer.Option()],
    focal_point: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a public JWK for an agency (enc) or one of its focal points (sig)."""
    from broker.directory import service
    from broker.directory.schemas import KeyIn

    data = validated(
        KeyIn,
        {
            "agency_id": agency,
            "focal_point_id": focal_point,
            "jwk": read_json(jwk_file, "JWK_FILE"),
        },
        {"agency_id": "--agency", "jwk": "JWK_FILE"},
    )
    _dump(call(data_dir, service.register, data, actor=_actor()))


@key_app.command("list")
def key_list(
    agency: Annotated[str | None, typer.Option()] = None, data_dir: DataDir = None
) -> None:
    """List keys with their status."""
    from broker.directory import service

    _dump(list(call(data_dir, service.list_keys, agency_id=agency)))


@key_app.command("rotate")
def key_rotate(kid: str, jwk_file: JsonFile, data_dir: DataDir = None) -> None:
    """Register a successor key and retire KID."""
    from broker.directory import service
    from broker.directory.schemas import RotateIn

    data = validated(RotateIn, {"jwk": read_json(jwk_file, "JWK_FILE")}, {"jwk": "JWK_FILE"})
    _dump(call(data_dir, service.rotate, kid, data, actor=_actor()))


@key_app.command("retire")
def key_retire(kid: str, data_dir: DataDir = None) -> None:
    """Retire a key."""
    from broker.directory import service

    _dump(call(data_dir, service.retire, kid, actor=_actor()))


@key_app.command("revoke")
def key_revoke(
    kid: str,
    reason: Annotated[str, typer.Option(help="superseded | key_compromise")],
    compromised_since: Annotated[
        datetime | None, typer.Option(help="RFC 3339, with key_compromise")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a key."""
    from broker.directory import service
    from broker.directory.schemas import RevokeIn

    data = validated(RevokeIn, {"reason": reason, "compromised_since": compromised_since}, {})
    _dump(call(data_dir, service.revoke, kid, data, actor=_actor()))


@agreement_app.command("create")
def agreement_create(document: JsonFile, data_dir: DataDir = None) -> None:
    """Register an agreement from its policy document."""
    from broker.agreements import service

    doc = _document(document, "DOCUMENT")
    _dump(call(data_dir, service.create_agreement, doc, actor=_actor()))


def _operator() -> Any:
    """The operator at the broker host, as the administrator the services check."""
    from broker.auth.service import Caller, Role

    return Caller(principal_id=uuid.UUID(int=0), name=getpass.getuser(), role=Role.admin)


@agreement_app.command("update")
def agreement_update(agreement_id: str, document: JsonFile, data_dir: DataDir = None) -> None:
    """Propose a new version of an agreement: it takes effect once its parties' registrars
    approve it (`broker registrar approve`); it supersedes an open proposal."""
    from broker.agreements import changes

    doc = _document(document, "DOCUMENT")
    _dump(call(data_dir, changes.propose, _operator(), agreement_id, doc, actor=_actor()))


@agreement_app.command("proposals")
def agreement_proposals(agreement_id: str, data_dir: DataDir = None) -> None:
    """The proposed changes to an agreement, with their approvals."""
    from broker.agreements import changes

    _dump(call(data_dir, changes.proposals, _operator(), agreement_id))


@agreement_app.command("list")
def agreement_list(data_dir: DataDir = None) -> None:
    """Current version of each agreement."""
    from broker.agreements import service

    _dump(list(call(data_dir, service.list_current)))


@operation_app.command("create")
def operation_create(document: JsonFile, data_dir: DataDir = None) -> None:
    """Register an operation."""
    from broker.agreements import service

    doc = _document(document, "DOCUMENT")
    _dump(call(data_dir, service.create_operation, doc, actor=_actor()))


@operation_app.command("update")
def operation_update(operation_id: str, document: JsonFile, data_dir: DataDir = None) -> None:
    """Change an operation."""
    from broker.agreements import service

    doc = _document(document, "DOCUMENT")
    _dump(call(data_dir, service.update_operation, operation_id, doc, actor=_actor()))


@operation_app.command("list")
def operation_list(data_dir: DataDir = None) -> None:
    """List operations."""
    from broker.agreements import service

    _dump(list(call(data_dir, service.list_operations)))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Principal name; created if new")],
    role: Annotated[
        str | None,
        typer.Option(help="focal_point | agency | registrar | auditor | admin (new principal)"),
    ] = None,
    agency: Annotated[str | None, typer.Option()] = None,
    focal_point: Annotated[str | None, typer.Option()] = None,
    audit_agency: Annotated[
        list[str] | None, typer.Option(help="Auditor binding; repeat; none = all")
    ] = None,
    ttl_days: Annotated[int | None, typer.Option()] = None,
    data_dir: DataDir = None,
) -> None:
    """Issue an API token (shown once). Creates the principal when --role is given."""
    from broker.auth import repository, service
    from broker.auth.service import Role

    if role is not None and role not in ROLES:
        fail(f"--role {role!r} is not a role: use one of {', '.join(ROLES)}")

    async def action(session: AsyncSession) -> dict[str, Any]:
        principal = await repository.principal_by_name(session, name)
        if principal is None:
            if role is None:
                fail(f"no principal {name!r}: pass --role to create it")
            principal = await service.create_principal(
                session,
                name=name,
                role=Role(role),
                actor=_actor(),
                agency_id=agency,
                focal_point_id=focal_point,
                audit_agencies=audit_agency,
            )
        credential, secret = await service.issue_token(
            session, principal, actor=_actor(), ttl_days=ttl_days
        )
        return {
            "id": str(credential.id),
            "principal": name,
            "role": principal.role,
            "expires_at": credential.expires_at.isoformat(),
            "token": secret,
        }

    print_json(call(data_dir, action))


@token_app.command("revoke")
def token_revoke(token_id: uuid.UUID, data_dir: DataDir = None) -> None:
    """Revoke a token by id."""
    from broker.auth import service

    _dump(call(data_dir, service.revoke_token, token_id, actor=_actor()))


@token_app.command("list")
def token_list(name: str, data_dir: DataDir = None) -> None:
    """A principal's tokens (ids, prefixes, expiry; never the secrets)."""
    from broker.auth import repository, service

    async def action(session: AsyncSession) -> list[dict[str, Any]]:
        principal = await service.principal_by_name(session, name)
        return [
            {
                "id": str(c.id),
                "prefix": c.prefix,
                "created_at": c.created_at,
                "expires_at": c.expires_at,
                "revoked_at": c.revoked_at,
            }
            for c in await repository.credentials_of(session, principal.id)
        ]

    print_json(call(data_dir, action))


@token_app.command("disable")
def principal_disable(name: str, reason: Reason, data_dir: DataDir = None) -> None:
    """Disable a principal: all its tokens stop working at once."""
    from broker.auth import service

    why = _reason(reason)
    _dump(
        call(data_dir, service.set_principal_status, name, "disabled", reason=why, actor=_actor())
    )


@token_app.command("enable")
def principal_enable(name: str, reason: Reason, data_dir: DataDir = None) -> None:
    """Enable a disabled principal again."""
    from broker.auth import service

    why = _reason(reason)
    _dump(call(data_dir, service.set_principal_status, name, "active", reason=why, actor=_actor()))


push_app = typer.Typer(no_args_is_help=True, help="Push delivery to partner endpoints.")
app.add_typer(push_app, name="push")


@push_app.command("redeliver")
def push_redeliver(
    mid: uuid.UUID,
    agency: Annotated[str, typer.Option(help="The recipient agency")],
    data_dir: DataDir = None,
) -> None:
    """Push MID to the agency again (re-arms a dead letter); the worker sends it."""
    from broker.push import service

    _dump(call(data_dir, service.redeliver, mid, agency, actor=_actor()))


witness_app = typer.Typer(no_args_is_help=True, help="Witnesses that cosign the log's checkpoints.")
app.add_typer(witness_app, name="witness")


@witness_app.command("register")
def witness_register(
    vkey: Annotated[str, typer.Argument(help="The verifier key `broker witness init` printed")],
    agency: Annotated[str, typer.Option(help="The agency that runs the witness")],
    data_dir: DataDir = None,
) -> None:
    """Register a witness; its agency's token may then send its cosignatures."""
    from broker.audit import witness
    from broker.audit.schemas import WitnessIn, WitnessOut

    data = validated(WitnessIn, {"vkey": vkey, "agency": agency}, {"vkey": "VKEY"})
    row = call(data_dir, witness.register, data, actor=_actor())
    _dump(WitnessOut.model_validate(row))


@witness_app.command("list")
def witness_list(data_dir: DataDir = None) -> None:
    """Registered witnesses: name, verifier key, agency, status."""
    from broker.audit import witness
    from broker.audit.schemas import WitnessOut

    _dump([WitnessOut.model_validate(w) for w in call(data_dir, witness.list_witnesses)])


@witness_app.command("retire")
def witness_retire(name: str, data_dir: DataDir = None) -> None:
    """Stop accepting a witness's cosignatures (those it sent stay served)."""
    from broker.audit import witness
    from broker.audit.schemas import WitnessOut

    _dump(WitnessOut.model_validate(call(data_dir, witness.retire, name, actor=_actor())))


broker_keys_app = typer.Typer(
    no_args_is_help=True, help="The broker's own keys: receipt signing and log checkpoints."
)
app.add_typer(broker_keys_app, name="broker-keys")


class BrokerKeyKind(StrEnum):
    receipt = "receipt"
    log = "log"


@broker_keys_app.command("rotate")
def broker_keys_rotate(
    kind: Annotated[
        BrokerKeyKind,
        typer.Option("--kind", help="receipt (receipts, signed directory) or log (checkpoints)"),
    ],
    data_dir: DataDir = None,
) -> None:
    """Rotate one of the broker's keys: the old one moves to `retired/` and signs a statement
    over the new one, recorded on the log (`log.key_rotated`); running processes switch to the
    new key by themselves."""
    from broker import keyring
    from broker.audit import keyrotation
    from broker.crypto.errors import CryptoError

    try:
        rotated = call(data_dir, keyrotation.rotate, kind.value, actor=_actor())
    except (keyring.KeyringError, CryptoError) as exc:
        fail(f"--kind {kind.value}: {exc}")
    except OSError as exc:
        fail(f"--kind {kind.value}: the keys folder: {exc.strerror or exc} ({exc.filename})")
    print_json(rotated)


@broker_keys_app.command("list")
def broker_keys_list(data_dir: DataDir = None) -> None:
    """The broker's keys, current and retired, with their validity and the rotations."""
    from broker.audit import keyrotation

    print_json(call(data_dir, keyrotation.published))
