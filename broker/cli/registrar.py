"""`broker registrar ...`: an agency's registrar sees, proposes, approves and restricts changes
to its agreements (docs/protocol.md, "Agreement approvals"), and keeps its agency's desks,
designations, principals and tokens (docs/registrars.md).

Agency side: base dependencies only. The approval is signed with a signing key of the
registrar's agency from the local keystore, over the hash of the document shown here (the
SDK recomputes it), never over the hash the broker states alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.agency import KEYSTORE, KID, TOKEN, URL, _api_errors, _client, _keystore
from broker.cli.common import USAGE, fail, read_json
from broker.cli.output import AS_JSON, emit, fields, iso, table, wants_json
from broker.schemas import vocab

app = typer.Typer(
    no_args_is_help=True,
    help="An agency registrar's work: agreement changes, and the agency's desks and principals.",
)

AGREEMENT = Annotated[str, typer.Argument(help="The agreement id, e.g. VN-KR-CUSTOMS")]


def _registrar(client: Any) -> str:
    """The agency the token's registrar acts for (one line if the token is not a registrar's)."""
    me: dict[str, Any] = client.me()
    if me.get("role") != "registrar" or not me.get("agency_id"):
        fail(
            f"--token is the token of a principal with role {me.get('role')}: pass your "
            "agency registrar's token (or set BROKER_TOKEN)",
            USAGE,
        )
    return str(me["agency_id"])


def _row(p: dict[str, Any]) -> dict[str, Any]:
    have = {a["agency"] for a in p["approvals"]}
    return {
        "id": p["id"],
        "status": p["status"],
        "base": p["base_version"],
        "sha256": p["policy_sha256"],
        "approved": sorted(have),
        "awaiting": [a for a in p["approvers"] if a not in have],
        "quorum": p["quorum"],
        "expires": iso(p["expires_at"]),
        "by": p["proposed_by"],
    }


_COLUMNS = (
    ("id", "PROPOSAL"),
    ("status", "STATUS"),
    ("base", "BASE"),
    ("quorum", "QUORUM"),
    ("approved", "APPROVED"),
    ("awaiting", "AWAITING"),
    ("expires", "EXPIRES"),
    ("sha256", "POLICY SHA-256"),
)


@app.command("proposals")
@_api_errors
def proposals(
    agreement: AGREEMENT,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """The proposed changes to an agreement: status, who approved, who is awaited, expiry."""
    with _client(url, token) as client:
        found = client.agreement_proposals(agreement)
    emit(found, as_json, lambda: table([_row(p) for p in found], _COLUMNS))


@app.command("propose")
@_api_errors
def propose(
    agreement: AGREEMENT,
    document: Annotated[
        Path, typer.Argument(help="The whole proposed agreement document (JSON file)")
    ],
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Propose a new version of an agreement to its parties (it supersedes an open proposal);
    it takes effect once they approve it."""
    doc = read_json(document, "DOCUMENT")
    if not isinstance(doc, dict):
        fail(f"DOCUMENT: {document} holds no JSON object: give the agreement document", USAGE)
    with _client(url, token) as client:
        made = client.propose_agreement_change(agreement, doc)
    emit(made, as_json, lambda: fields(_row(made).items()))


@app.command("approve")
@_api_errors
def approve(
    agreement: AGREEMENT,
    proposal: Annotated[
        str, typer.Argument(help="The proposal id `broker registrar proposals` lists")
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Approve without asking (after showing the change)")
    ] = False,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
    kid: KID = None,
    as_json: AS_JSON = None,
) -> None:
    """Show a proposal's change against the version it changes and its hash, then approve it
    for your agency with a signed `agreement-approval+jws`."""
    from broker.sdk import agreements as sdk

    with _client(url, token) as client:
        agency = _registrar(client)
        found = [p for p in client.agreement_proposals(agreement) if str(p["id"]) == proposal]
        if not found:
            fail(
                f"PROPOSAL {proposal}: no such proposal of {agreement}: "
                f"see `broker registrar proposals {agreement}`",
                USAGE,
            )
        chosen = found[0]
        digest = sdk.policy_sha256(chosen["document"])
        if digest != chosen["policy_sha256"]:
            fail(
                f"proposal {proposal}: its document hashes to {digest}, not the stated "
                f"{chosen['policy_sha256']}: not approved; tell the broker's operator"
            )
        to_err = wants_json(as_json)  # the change is for the person; stdout stays JSON

        def out(text: str) -> None:
            typer.echo(text, err=to_err)

        out(f"{agreement}: version {chosen['base_version']} -> proposal {proposal}")
        for line in sdk.diff(chosen["base_document"], chosen["document"]) or ["(no change)"]:
            out(line)
        out(f"policy sha256 {digest}")
        if not yes:
            if not sys.stdin.isatty():
                fail("--yes: pass it to approve without a terminal to confirm in", USAGE)
            typer.confirm(f"Approve for {agency}?", abort=True)
        signer = _keystore(keystore).with_directory(client).signing_key(agency, kid)
        answer = sdk.approve(client, signer, chosen, agency)
    emit(answer, as_json, lambda: fields(_row(answer).items()))


@app.command("restrict")
@_api_errors
def restrict(
    agreement: AGREEMENT,
    reason: Annotated[str, typer.Option(help="Why: recorded in the agreement and the log")],
    suspend: Annotated[
        bool, typer.Option("--suspend", help="Suspend the agreement at once")
    ] = False,
    exclude_to: Annotated[
        str | None,
        typer.Option("--exclude-to", help="Exclude offences your agency sends to this partner"),
    ] = None,
    offence: Annotated[
        list[str] | None,
        typer.Option("--offence", help="An offence code to exclude (repeat for several)"),
    ] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Narrow an agreement at once, without approvals: suspend it, or exclude offences from
    your agency to one partner. Lifting either is a proposal."""
    if suspend == (exclude_to is not None):
        fail("give either --suspend or --exclude-to PARTNER with --offence", USAGE)
    if exclude_to is not None and not offence:
        fail("--exclude-to needs at least one --offence", USAGE)
    if suspend and offence:
        fail("--offence goes with --exclude-to, not --suspend", USAGE)
    for code in offence or []:
        if code not in vocab.OFFENCES:
            fail(
                f"--offence {code!r} is not an offence code: one of {', '.join(vocab.OFFENCES)}",
                USAGE,
            )
    body: dict[str, Any] = {"action": "suspend" if suspend else "exclude", "reason": reason}
    if exclude_to is not None:
        body |= {"to": exclude_to, "offences": offence}
    with _client(url, token) as client:
        answer = client.restrict_agreement(agreement, body)
    version = answer["agreement"]
    emit(
        answer,
        as_json,
        lambda: fields(
            [
                ("agreement", version["id"]),
                ("version", version["version"]),
                ("status", version["status"]),
                ("restriction", answer["action"]),
                ("policy sha256", version["sha256"]),
            ]
        ),
    )


# --- the agency's own registry: desks, designations, principals and tokens ------------------
#
# The same admin routes the operator uses (docs/registrars.md), confined by the broker to the
# registrar's agency: another agency's desk or principal is refused `auth.foreign_agency`.

desk_app = typer.Typer(no_args_is_help=True, help="Your agency's focal points (desks).")
principal_app = typer.Typer(
    no_args_is_help=True, help="Your agency's principals (officers, the inbox system) and tokens."
)
app.add_typer(desk_app, name="focal-point")
app.add_typer(principal_app, name="principal")

FOCAL_POINT = Annotated[str, typer.Argument(help="The focal point id, e.g. VN-GDC/fp-hcm-01")]
REASON = Annotated[str, typer.Option(help="Why, for the log (no personal data)")]
PRINCIPAL = Annotated[str, typer.Argument(help="The principal's name, e.g. vn-gdc-fp-lc-07")]


def _checked(focal_point: str) -> str:
    if focal_point.count("/") != 1:
        fail(f"FOCAL_POINT {focal_point!r}: give AGENCY/slug, e.g. VN-GDC/fp-hcm-01", USAGE)
    return focal_point


def _desk(client: Any, focal_point: str, action: str, body: dict[str, Any]) -> Any:
    return client.post(f"/v1/admin/focal-points/{_checked(focal_point)}/{action}", body)


def _shown(answer: Any, as_json: bool | None) -> None:
    emit(answer, as_json, lambda: fields(answer.items()))


@desk_app.command("suspend")
@_api_errors
def desk_suspend(
    focal_point: FOCAL_POINT,
    reason: REASON,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Suspend a desk at once: its tokens are refused until you reactivate it."""
    with _client(url, token) as client:
        _shown(client.suspend_focal_point(_checked(focal_point), reason), as_json)


@desk_app.command("reactivate")
@_api_errors
def desk_reactivate(
    focal_point: FOCAL_POINT,
    reason: REASON,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Put a suspended desk back in service: its tokens work again."""
    with _client(url, token) as client:
        _shown(client.reactivate_focal_point(_checked(focal_point), reason), as_json)


@desk_app.command("designate")
@_api_errors
def desk_designate(
    focal_point: FOCAL_POINT,
    agreement: AGREEMENT,
    valid_from: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD")],
    until: Annotated[
        str | None, typer.Option("--until", help="Last day, YYYY-MM-DD (none: open-ended)")
    ] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Designate a desk under an agreement your agency is party to, for a period."""
    body = {"agreement": agreement, "valid_from": _day("--from", valid_from)}
    if until is not None:
        body["valid_until"] = _day("--until", until)
    with _client(url, token) as client:
        _shown(_desk(client, focal_point, "designations", body), as_json)


@desk_app.command("end-designation")
@_api_errors
def desk_end_designation(
    focal_point: FOCAL_POINT,
    agreement: AGREEMENT,
    until: Annotated[str, typer.Option("--until", help="Last day, YYYY-MM-DD (today or later)")],
    reason: REASON,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """End a desk's designation under an agreement on a day (inclusive)."""
    body = {"valid_until": _day("--until", until), "reason": reason}
    with _client(url, token) as client:
        _shown(_desk(client, focal_point, f"designations/{agreement}/end", body), as_json)


def _day(option: str, value: str) -> str:
    from datetime import date

    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        fail(f"{option} {value!r} is not a date: give YYYY-MM-DD, e.g. 2026-12-31", USAGE)


@principal_app.command("create")
@_api_errors
def principal_create(
    name: PRINCIPAL,
    focal_point: Annotated[
        str | None,
        typer.Option(help="An officer's desk (role focal_point); without it, the inbox system"),
    ] = None,
    ttl_days: Annotated[int | None, typer.Option(help="Days the first token lasts")] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Create an officer's principal (with --focal-point) or your agency's inbox principal, and
    print its first token, shown once."""
    with _client(url, token) as client:
        agency = _registrar(client)
        body: dict[str, Any] = (
            {"name": name, "role": "focal_point", "focal_point_id": focal_point}
            if focal_point is not None
            else {"name": name, "role": "agency", "agency_id": agency}
        )
        if ttl_days is not None:
            body["ttl_days"] = ttl_days
        _shown(client.post("/v1/admin/principals", body), as_json)


@principal_app.command("token")
@_api_errors
def principal_token(
    name: PRINCIPAL,
    ttl_days: Annotated[int | None, typer.Option(help="Days the token lasts")] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Issue another token for one of your agency's principals (rotation); shown once."""
    body = {} if ttl_days is None else {"ttl_days": ttl_days}
    with _client(url, token) as client:
        _shown(client.post(f"/v1/admin/principals/{name}/tokens", body), as_json)


@principal_app.command("revoke-token")
@_api_errors
def principal_revoke_token(
    token_id: Annotated[str, typer.Argument(help="The token's id (printed when it was issued)")],
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
) -> None:
    """Revoke one token of your agency's principals: it stops working at once."""
    import uuid

    try:
        uuid.UUID(token_id)
    except ValueError:
        fail(f"TOKEN_ID {token_id!r} is not a token id: give the id printed at issue", USAGE)
    with _client(url, token) as client:
        client.post(f"/v1/admin/tokens/{token_id}/revoke")
    typer.echo(f"revoked {token_id}")


@principal_app.command("disable")
@_api_errors
def principal_disable(
    name: PRINCIPAL,
    reason: REASON,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Disable a principal: every token of it stops working at once."""
    with _client(url, token) as client:
        _shown(client.post(f"/v1/admin/principals/{name}/disable", {"reason": reason}), as_json)


@principal_app.command("enable")
@_api_errors
def principal_enable(
    name: PRINCIPAL,
    reason: REASON,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """Enable a disabled principal: its unexpired, unrevoked tokens work again."""
    with _client(url, token) as client:
        _shown(client.post(f"/v1/admin/principals/{name}/enable", {"reason": reason}), as_json)
