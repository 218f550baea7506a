"""An officer's conveniences: `broker agreements`, `broker scope`, `broker feedback`.

Agency side, base dependencies only (no server stack). `agreements` and `scope` read what the
broker says the token's agency may send (`GET /v1/agreements`, only agreements it is party to);
`feedback` builds a feedback body and its routing from options and sends it through the same
path as `broker send` (`broker.sdk.agent.compose` and `send`).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli import agency, output
from broker.cli.agency import DRY_RUN, EXPIRES, KEYSTORE, KID, RECEIPTS, TOKEN, URL
from broker.cli.common import USAGE, fail, read_json
from broker.cli.output import AS_JSON
from broker.schemas import vocab

AGREEMENTS = [
    ("id", "agreement"),
    ("version", "version"),
    ("status", "status"),
    ("valid_from", "from"),
    ("valid_until", "until"),
    ("partners", "partners"),
    ("max_handling", "max handling"),
    ("ours", "your focal points"),
]


@agency._api_errors
def agreements(
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """The agreements your agency is party to.

    Partners, validity, the highest handling marking and your agency's designated focal
    points; `broker scope` says what you may send to each partner.
    """
    with agency._client(url, token) as client:
        views = client.agreements()
    rows = [
        v
        | {
            "partners": _some([d["to"] for d in v["directions"]]),
            "valid_until": v.get("valid_until") or "(open)",
            "ours": v.get("designated_focal_points", []),
        }
        for v in views
    ]
    output.emit(views, as_json, lambda: _agreements_table(rows))


def _some(names: list[str], shown: int = 5) -> str:
    """A long list of partners cut short in a table (the JSON has them all)."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more"


def _agreements_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        typer.echo("(your agency is party to no agreement)")
    else:
        output.table(rows, AGREEMENTS)


@agency._api_errors
def scope(
    to: Annotated[
        str | None,
        typer.Option("--to", help="Only what you may send to this agency (default: every partner)"),
    ] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """What you may send to whom, about what, until when.

    For the token's focal point (or agency): per agreement and partner, the offences, the
    exclusions with their reason, subject types, handling limit, operations, and until when.
    """
    with agency._client(url, token) as client:
        me = client.me()
        views = client.agreements()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    rows = [
        _direction(view, d, me.get("focal_point_id"), today)
        for view in views
        for d in view["directions"]
        if to is None or d["to"] == to
    ]
    if not rows:
        typer.echo(
            "note: no agreement of yours "
            + (f"has {to} as a partner" if to else "has a partner")
            + ": see `broker agreements`",
            err=True,
        )
    output.emit(rows, as_json, lambda: _scope_blocks(rows))


def _direction(
    view: dict[str, Any], direction: dict[str, Any], fp: str | None, today: str
) -> dict[str, Any]:
    """One agreement toward one partner, as the caller may use it today."""
    partner = direction["to"]
    mine = [
        d
        for d in view.get("designations", [])
        if fp is None or d["focal_point_id"] == fp  # an agency token: all of its focal points
    ]
    designated = [
        d
        for d in mine
        if d["valid_from"] <= today and (d["valid_until"] is None or today <= d["valid_until"])
    ]
    in_force = view["valid_from"] <= today and (
        view.get("valid_until") is None or today <= view["valid_until"]
    )
    why_not = None
    if view["status"] != "active":
        why_not = f"the agreement is {view['status']}"
    elif not in_force:
        why_not = "the agreement is not in force today"
    elif not direction["offences"]:
        why_not = "every offence is excluded in this direction"
    elif not designated:
        who = fp or "none of your focal points"
        why_not = f"{who} is not designated under it today"
    ends = [u for u in [view.get("valid_until"), *(d["valid_until"] for d in designated)] if u]
    operations = [
        op
        for op in view.get("operations", [])
        if partner in op.get("members", []) and op.get("status") == "active"
    ]
    return {
        "agreement": view["id"],
        "version": view["version"],
        "policy_sha256": view["policy_sha256"],
        "to": partner,
        "may_send": why_not is None,
        "why_not": why_not,
        "offences": direction["offences"],
        "excluded": direction["excluded"],
        "subject_types": view["subject_types"],
        "max_handling": view["max_handling"],
        "onward_sharing": view["onward_sharing"],
        "operations": [
            {k: op.get(k) for k in ("id", "starts_at", "ends_at", "status")} for op in operations
        ],
        "focal_points": mine,
        "until": min(ends) if ends else None,
    }


def _scope_blocks(rows: list[dict[str, Any]]) -> None:
    """One block per agreement and partner (exclusion reasons are sentences, not cells)."""
    for i, r in enumerate(rows):
        if i:
            typer.echo("")
        typer.echo(f"{r['agreement']} -> {r['to']}")
        excluded = [
            ", ".join(e["offences"])
            + (f" (lifted for {', '.join(e['assured'])} by an assurance)" if e.get("assured") else "")
            + (" (an assurance would lift it)" if e.get("unless_assurance") and not e.get("assured") else "")
            + f": {e['reason']}"
            for e in r["excluded"]
        ]  # fmt: skip
        now = dt.datetime.now(dt.UTC).isoformat()
        operations = [
            f"{op['id']} {output.iso(op['starts_at'])} to {output.iso(op['ends_at'])}"
            + (" (ended)" if str(output.iso(op["ends_at"])) < now[:19] else "")
            for op in r["operations"]
        ]
        focal = [
            f"{d['focal_point_id']} from {d['valid_from']}"
            + (f" until {d['valid_until']}" if d["valid_until"] else "")
            for d in r["focal_points"]
        ]
        lines = [
            ("may send", "yes" if r["may_send"] else f"no: {r['why_not']}"),
            ("offences", r["offences"] or "(none)"),
            ("excluded", "; ".join(excluded)),
            ("subject types", r["subject_types"]),
            ("handling", f"up to {r['max_handling']} (TLP:RED: one recipient per message)"),
            ("onward sharing", r["onward_sharing"]),
            ("operations", "; ".join(operations)),
            ("focal points", "; ".join(focal) or "(none designated)"),
            ("until", r["until"] or "no end date"),
        ]
        for key, value in lines:
            text = output.cell(value)
            if text:
                typer.echo(f"  {key.ljust(14)}  {text}")


QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
# Which option built each member of the seizure, to name it in a schema error.
SEIZURE_OPTIONS = {
    "date": "--seized-on",
    "place": "--place",
    "commodity": "--commodity",
    "quantity": "--quantity",
    "species": "--species",
    "cites_appendix": "--cites-appendix",
}


def _subject_type(value: str) -> str:
    """A subject type of the vocabulary (Typer takes no Literal inside a list)."""
    if value not in vocab.SUBJECT_TYPES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(vocab.SUBJECT_TYPES)}")
    return value


@agency._api_errors
def feedback(
    mid: Annotated[str, typer.Argument(help="The mid of the alert you answer")],
    fp: Annotated[str, typer.Option("--from", help="Your focal point id, e.g. HK-CED/fp-01")],
    outcome: Annotated[vocab.Outcome, typer.Option(help="What came of the alert")],
    commodity: Annotated[
        vocab.Commodity | None,
        typer.Option(help="What was seized (with --outcome seized, adds a seizure to the body)"),
    ] = None,
    quantity: Annotated[
        str | None,
        typer.Option(help="How much was seized: a number and a unit, e.g. 212kg, 1500pieces"),
    ] = None,
    quantity_band: Annotated[
        vocab.QuantityBand | None,
        typer.Option(help="The band for the routing (default: from --quantity in kg or g)"),
    ] = None,
    seized_on: Annotated[
        str | None, typer.Option(help="Date of the seizure, YYYY-MM-DD (default: today, UTC)")
    ] = None,
    place: Annotated[
        str | None, typer.Option(help="Where: a UN/LOCODE (e.g. HKHKG) or a short text")
    ] = None,
    species: Annotated[
        str | None,
        typer.Option(help="Wildlife: scientific name, e.g. 'Loxodonta africana'"),
    ] = None,
    cites_appendix: Annotated[
        str | None, typer.Option(help="Wildlife: CITES appendix, I, II or III")
    ] = None,
    narrative: Annotated[
        str | None,
        typer.Option(help="What happened, in words (encrypted; the broker never reads it)"),
    ] = None,
    language: Annotated[
        str | None, typer.Option(help="BCP 47 language of the narrative, e.g. en")
    ] = None,
    body: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Start from this feedback body (JSON); the options above add to it",
        ),
    ] = None,
    state: Annotated[
        Path,
        typer.Option(
            help="Inbox folder of `inbox pull`, where the alert is found: it gives the defaults "
            "of --to, --agreement, --operation, --offence and --handling"
        ),
    ] = Path("inbox"),
    to: Annotated[
        str | None, typer.Option("--to", help="The alert's sender agency (default: from the alert)")
    ] = None,
    agreement: Annotated[
        str | None, typer.Option(help="The alert's agreement (default: from the alert)")
    ] = None,
    operation: Annotated[
        str | None, typer.Option(help="The alert's operation (default: from the alert)")
    ] = None,
    offence: Annotated[
        vocab.Offence | None, typer.Option(help="The alert's offence (default: from the alert)")
    ] = None,
    subject_types: Annotated[
        list[str] | None,
        typer.Option(
            "--subject-type",
            parser=_subject_type,
            metavar="<" + "|".join(vocab.SUBJECT_TYPES) + ">",
            help="What the feedback is about; repeat (default: seizure when one is reported, "
            "else the alert's)",
        ),
    ] = None,
    priority: Annotated[vocab.Priority, typer.Option(help="How fast it needs attention")] = (
        "routine"
    ),
    handling: Annotated[
        vocab.Handling | None,
        typer.Option(help="TLP 2.0 marking (default: the alert's, else TLP:AMBER)"),
    ] = None,
    dry_run: DRY_RUN = False,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
    kid: KID = None,
    receipts: RECEIPTS = Path("sent"),
    expires: EXPIRES = "7d",
    as_json: AS_JSON = None,
) -> None:
    """Answer an alert you received: outcome, seizure, narrative.

    The outcome (and what was seized) goes in the signed routing, the narrative and seizure
    details in the encrypted body; signed, encrypted and sent as `broker send` does.
    """
    from broker import schemas
    from broker.sdk import agent

    agency._need_token(token)
    ttl_s = agency.ttl_seconds(expires)
    alert = _received(state, mid)
    routing = alert.get("routing", {})
    recipient = to or routing.get("sender")
    agreement = agreement or routing.get("agreement")
    offence = offence or routing.get("offence")
    missing = [
        name
        for name, value in (("--to", recipient), ("--agreement", agreement), ("--offence", offence))
        if not value
    ]
    if missing:
        fail(
            f"alert {mid} is not in {state}: pull it first (`broker inbox pull`), pass --state, "
            f"or give {', '.join(missing)}",
            USAGE,
        )
    content: dict[str, Any] = dict(read_json(body, "--body")) if body else {}
    if narrative:
        content["narrative"] = narrative
    if language:
        content["language"] = language
    if not content.get("narrative"):
        fail("--narrative is required (or a --body with one): say what happened, in words", USAGE)
    if mid not in content.setdefault("references", []):
        content["references"].append(mid)
    amount = _quantity(quantity) if quantity else None
    added = None
    if commodity and (outcome == "seized" or amount or seized_on or place):
        if commodity == "wildlife" and not (species and cites_appendix):
            fail("--commodity wildlife needs --species and --cites-appendix (CITES listing)", USAGE)
        seizure: dict[str, Any] = {
            "type": "seizure",
            "date": seized_on or dt.datetime.now(dt.UTC).date().isoformat(),
            "commodity": commodity,
        }
        if place:
            code = place.replace(" ", "").upper()
            seizure["place"] = (
                {"locode": code} if re.fullmatch(r"[A-Z]{2}[A-Z2-9]{3}", code) else {"text": place}
            )
        if amount:
            seizure["quantity"] = amount
        if species:
            seizure["species"] = species
        if cites_appendix:
            seizure["cites_appendix"] = cites_appendix
        content.setdefault("seizures", []).append(seizure)
        added = len(content["seizures"]) - 1
    seized = content.get("seizures", [])
    extra: dict[str, Any] = {"in_reply_to": mid, "outcome": outcome}
    if commodity or seized:
        extra["commodity"] = commodity or seized[0]["commodity"]
    kinds = subject_types or (["seizure"] if seized else routing.get("subject_types"))
    if not kinds:
        fail(f"--subject-type is needed: alert {mid} is not in {state} to take it from", USAGE)
    band = quantity_band or agent.quantity_band(
        amount or (seized[0].get("quantity") if seized else None)
    )
    if band:
        extra["quantity_band"] = band
    store = agency._keystore(keystore)
    with agency._client(url, token) as client:
        signer = store.with_directory(client).signing_key(fp, kid)
        try:
            draft = agent.compose(
                client,
                signer,
                sender_fp=fp,
                recipients=[recipient],
                agreement=agreement,
                operation=operation or routing.get("operation"),
                offence=offence,
                body=content,
                subject_types=sorted(set(kinds)),
                kind="feedback",
                priority=priority,
                handling=handling or routing.get("handling") or "TLP:AMBER",
                extra=extra,
                ttl_s=ttl_s,
            )
        except schemas.SchemaError as exc:
            routing_errors = exc.schema.endswith("routing")
            named = [(_option(e.pointer, added, routing_errors), e.message) for e in exc.errors]
            where = "the --body file" if any(n.startswith("/") for n, _ in named) else "them"
            fail("; ".join(f"{n}: {m}" for n, m in named) + f": fix {where}", USAGE)
        if dry_run:
            agency.report_dry_run(draft, signer.kid, as_json)
            return
        answer = agent.send(client, draft)
    agency.report_sent(draft, signer.kid, answer, receipts, as_json)


def _received(state: Path, mid: str) -> dict[str, Any]:
    """The decrypted alert `mid` kept by `inbox pull` in `state`, or {} if it is not there."""
    from broker.sdk.agent import stored_alerts

    if not (state / "alerts").is_dir():
        return {}
    for entry in stored_alerts(state):
        if entry["mid"] == mid and "alert" in entry:
            found: dict[str, Any] = entry["alert"]
            return found
    return {}


def _quantity(text: str) -> dict[str, Any]:
    """`212kg`, `8.2 kg`, `1500 pieces` as the schema's {value, unit}."""
    from broker import schemas

    seizure = schemas.load("body/subject")["$defs"]["seizure"]
    units = seizure["properties"]["quantity"]["properties"]["unit"]["enum"]
    match = QUANTITY.match(text)
    if not match or match[2].lower() not in units or float(match[1]) <= 0:
        fail(
            f"--quantity {text!r} is not a quantity: give a number above 0 and a unit "
            f"({', '.join(units)}), e.g. 212kg",
            USAGE,
        )
    value = float(match[1])
    return {"value": int(value) if value.is_integer() else value, "unit": match[2].lower()}


ROUTING_OPTIONS = {
    "sender_fp": "--from",
    "sender": "--from",
    "recipients": "--to",
    "agreement": "--agreement",
    "operation": "--operation",
    "in_reply_to": "MID",
}


def _option(pointer: str, added: int | None, routing: bool = False) -> str:
    """The option that set the member at `pointer` (of the body, or of the routing header),
    or the pointer itself."""
    parts = pointer.strip("/").split("/")
    if routing:
        return ROUTING_OPTIONS.get(parts[0], f"routing {pointer}")
    if added is not None and parts[:2] == ["seizures", str(added)] and len(parts) > 2:
        return SEIZURE_OPTIONS.get(parts[2], pointer)
    return {"narrative": "--narrative", "language": "--language"}.get(parts[0], pointer or "/")
