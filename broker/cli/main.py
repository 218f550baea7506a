"""The `broker` command line: server, administration and agency-side commands."""

from __future__ import annotations

from typing import Annotated

import typer

from broker.cli import (
    admin,
    agency,
    audit,
    invariants,
    officer,
    registrar,
    results,
    server,
    witness,
)
from broker.cli.common import Group, set_verbose

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold keys and passphrases
    help="Secure inter-agency exchange broker.",
)


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="On an error, show its details too: the broker's whole problem document, "
            "or the traceback.",
        ),
    ] = False,
) -> None:
    """Secure inter-agency exchange broker."""
    set_verbose(verbose)


for command in (server.serve, server.worker, server.beat, server.migrate):
    app.command(rich_help_panel="Server")(command)
app.add_typer(server.demo_app, name="demo", rich_help_panel="Server")
app.command(rich_help_panel="Server")(invariants.check)
app.add_typer(admin.app, name="admin", rich_help_panel="Administration")
app.add_typer(agency.keys_app, name="keys", rich_help_panel="Agency side")
app.command(rich_help_panel="Agency side")(agency.send)
app.command(rich_help_panel="Agency side")(agency.status)
app.command(rich_help_panel="Agency side")(agency.recall)
app.add_typer(agency.inbox_app, name="inbox", rich_help_panel="Agency side")
for command in (officer.agreements, officer.scope, officer.feedback):
    app.command(rich_help_panel="Agency side")(command)
app.add_typer(audit.app, name="audit", rich_help_panel="Auditor")
app.command(rich_help_panel="Auditor")(results.results)
app.add_typer(witness.app, name="witness", rich_help_panel="Agency side")
app.add_typer(registrar.app, name="registrar", rich_help_panel="Agency side")
