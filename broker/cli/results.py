"""`broker results OPERATION`: an operation's feedback rolled up, for its coordinator or an auditor.

Over HTTP with a bearer token (the coordinating agency's agency or focal-point token, or an
auditor's who oversees a member): `GET /v1/operations/{id}/results`, or `.../results.csv` with
`--csv`. Base dependencies only, like the other agency-side commands.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from broker.cli import agency, output
from broker.cli.agency import TOKEN, URL
from broker.cli.output import AS_JSON

DIMENSIONS = (
    ("phase", "phase"),
    ("week", "ISO week"),
    ("agency", "agency"),
    ("outcome", "outcome"),
    ("commodity", "commodity"),
    ("quantity_band", "quantity band"),
)


@agency._api_errors
def results(
    operation: Annotated[str, typer.Argument(help="The operation's id, e.g. MEKONG-DRAGON-V")],
    phase: Annotated[
        str | None,
        typer.Option("--phase", help="Only this phase's feedback (`outside`: in no phase)"),
    ] = None,
    as_csv: Annotated[
        bool,
        typer.Option("--csv", help="Print the grouped counts as CSV (one row per group)"),
    ] = False,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    as_json: AS_JSON = None,
) -> None:
    """An operation's results: the signed feedback on its alerts counted by phase, ISO week,
    reporting agency, outcome, commodity and quantity band.

    For the operation's coordinating agency and for auditors who oversee a member (they count
    the feedback sent by or to the agencies they oversee). `broker results OP --csv > op.csv`
    saves the grouped counts; `GET /v1/operations/OP/results/feedback` lists the messages
    behind a figure with their log leaves.
    """
    params = {"phase": phase} if phase else None
    path = f"/v1/operations/{operation}/results"
    with agency._client(url, token) as client:
        if as_csv:
            typer.echo(client._call("GET", f"{path}.csv", params=params), nl=False)
            return
        body: dict[str, Any] = client._call("GET", path, params=params)
    output.emit(body, as_json, lambda: _render(body))


def _render(body: dict[str, Any]) -> None:
    output.fields(
        [
            ("operation", f"{body['operation']}: {body['title']}"),
            ("coordinator", body.get("coordinator") or "(none)"),
            ("window", f"{output.iso(body['starts_at'])} to {output.iso(body['ends_at'])}"),
            ("phase", body.get("phase") or "(all)"),
            ("counted for", body["agencies"] if body.get("agencies") is not None else "(all)"),
            ("feedback", str(body["total"])),
        ]
    )
    for key, header in DIMENSIONS:
        rows = [
            {"value": r["value"] or ("outside" if key == "phase" else "none"), "count": r["count"]}
            for r in body[f"by_{key}"]
        ]
        if rows:
            typer.echo("")
            output.table(rows, [("value", header), ("count", "feedback")])
