"""`broker check`: prove the delivery and audit invariants from the database (fault drills)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.cli.common import DataDir, configure, fail, print_json, require_database


def check(
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the relay and log to settle.")
    ] = 120.0,
    history: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="JSON lines of client outcomes to hold the record to: "
            '{"sender", "mid", "envelope_sha256", "outcome": "ok"|"refused"|"unknown"}.',
        ),
    ] = None,
    log_key: Annotated[
        str | None,
        typer.Option(
            "--log-key", envvar="BROKER_LOG_KEY", help="Pinned log key (default: the broker's own)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Wait until delivery and the log have settled, then check every invariant (exit 1 if not).

    Every accepted message is in each recipient's inbox exactly once, with contiguous inbox
    numbers; every accept, delivery, fetch, acknowledgement (and, with --history, refusal) is
    on the audit log exactly once; the stored log verifies with the log key.
    """
    configure(data_dir)
    from broker import db
    from broker.invariants import service

    past = None
    if history is not None:
        try:
            past = service.History.from_jsonl(history.read_text(encoding="utf-8").splitlines())
        except (ValueError, KeyError, TypeError) as exc:
            fail(
                f"--history {history} is not JSON lines of "
                f'{{"sender", "mid", "envelope_sha256", "outcome"}} ({exc!r}): fix the file'
            )
    require_database()
    try:
        report = db.run(
            service.wait_settled, db.session_scope, past, timeout_s=timeout, log_key=log_key
        )
    except TimeoutError as exc:
        fail(f"{exc}: start it, or raise --timeout")
    if as_json:
        print_json(report.summary())
    else:
        typer.echo(str(report))
    if not report.ok:
        fail(f"{len(report.violations)} invariant violations")
    if not as_json:
        typer.echo("OK")
