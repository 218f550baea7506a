"""The `broker` command line: server, administration and agency-side commands."""

from __future__ import annotations

import typer

from broker.cli import admin, agency, audit, invariants, server
from broker.cli.common import Group

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold keys and passphrases
    help="Secure inter-agency exchange broker.",
)


@app.callback()
def main() -> None:
    """Secure inter-agency exchange broker."""


for command in (server.serve, server.worker, server.beat, server.migrate, server.demo):
    app.command(rich_help_panel="Server")(command)
app.command(rich_help_panel="Server")(invariants.check)
app.add_typer(admin.app, name="admin", rich_help_panel="Administration")
app.add_typer(agency.keys_app, name="keys", rich_help_panel="Agency side")
app.command(rich_help_panel="Agency side")(agency.send)
app.command(rich_help_panel="Agency side")(agency.status)
app.add_typer(agency.inbox_app, name="inbox", rich_help_panel="Agency side")
app.add_typer(audit.app, name="audit", rich_help_panel="Auditor")
