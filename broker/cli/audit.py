"""`broker audit ...`: verify the broker's transparency log and audit exports independently.

Over HTTP with the pinned log key only: no database, no server settings. Mistakes (a bad URL,
an unwritable state file) and failed checks each end in one `error: ...` line. The verifier is
imported by the commands only, so that other commands start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from broker.cli.common import USAGE, fail

if TYPE_CHECKING:
    from broker.audit.verify import VerifyError

app = typer.Typer(
    no_args_is_help=True,
    help="Auditor tools: verify the transparency log and exports with the pinned log key.",
)

LogKey = Annotated[
    str,
    typer.Option(
        "--log-key",
        envvar="BROKER_LOG_KEY",
        help="The log's verifier key <origin>+<key id>+<base64>, pinned out of band.",
    ),
]


@app.command()
def verify(
    log_key: LogKey,
    url: Annotated[
        str, typer.Option(envvar="BROKER_URL", help="The broker's base URL.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="BROKER_TOKEN", help="A bearer token (brk_...).")
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="File keeping the last verified checkpoint (split-view detection)."),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="Download every leaf and subtree hash and recompute the tree."),
    ] = False,
    index: Annotated[
        int | None, typer.Option("--index", help="Also prove that leaf N is included.")
    ] = None,
    witnesses: Annotated[
        int,
        typer.Option(
            "--witnesses",
            min=0,
            help="Require K distinct pinned witnesses' cosignatures: verify the latest "
            "checkpoint with K of them.",
        ),
    ] = 0,
    witness_key: Annotated[
        list[str] | None,
        typer.Option(
            "--witness-key",
            envvar="BROKER_WITNESS_KEYS",
            help="A witness's verifier key <name>+<key id>+<base64>, pinned out of band; "
            "repeat (BROKER_WITNESS_KEYS: separated by spaces).",
        ),
    ] = None,
) -> None:
    """Check the latest checkpoint's signature and its consistency with the stored one."""
    import httpx2

    from broker.audit import verify as verifier

    keys = witness_key or []
    if witnesses and len(keys) < witnesses:
        fail(
            f"--witnesses {witnesses} needs at least {witnesses} --witness-key (or "
            f"BROKER_WITNESS_KEYS), {len(keys)} given: pin the keys of the witnesses you trust",
            USAGE,
        )
    try:
        report = verifier.verify_log(
            url,
            token,
            log_key,
            state=state,
            full=full,
            index=index,
            witnesses=witnesses,
            witness_keys=keys,
        )
    except verifier.VerifyError as exc:
        _failed(exc, url, state)
    except httpx2.InvalidURL as exc:
        fail(
            f"--url {url!r} is not a URL ({exc}): give the broker's, e.g. http://127.0.0.1:8000",
            USAGE,
        )
    except OSError as exc:  # the state file: its checkpoint was verified but cannot be kept
        fail(f"--state: cannot write {state} ({exc.strerror}): give a writable file", USAGE)
    typer.echo(str(report))
    typer.echo("OK")


@app.command("verify-export")
def verify_export(
    file: Annotated[Path, typer.Argument(help="An export from GET /v1/audit/export.")],
    log_key: LogKey,
    require_all: Annotated[
        bool,
        typer.Option(
            "--require-all", help="Fail when an event is not yet covered by the checkpoint."
        ),
    ] = False,
) -> None:
    """Verify an export offline: signature, inclusion proofs, and each event against its leaf."""
    from broker.audit import verify as verifier

    try:
        report = verifier.verify_export(file.read_bytes(), log_key, require_all=require_all)
    except OSError as exc:
        fail(f"FILE: cannot read {file} ({exc.strerror}): give a readable export", USAGE)
    except verifier.VerifyError as exc:
        _failed(exc, None, None)
    typer.echo(str(report))
    typer.echo("OK")


def _failed(exc: VerifyError, url: str | None, state: Path | None) -> NoReturn:
    """A failed check (exit 1) as `code: what`, or the option to fix (exit 2), in one line."""
    import httpx2

    cause = exc.__context__  # the verifier raises `from None`: the cause is kept, not shown
    if exc.code == "bad_witness_key":
        fail(
            f"--witness-key: {exc}: give each key as its witness published it, "
            "<name>+<key id>+<base64> (BROKER_WITNESS_KEYS), and as many as --witnesses",
            USAGE,
        )
    if exc.code == "bad_key":
        fail(
            f"--log-key: {exc}: give the key as published, <origin>+<key id>+<base64> "
            "(BROKER_LOG_KEY)",
            USAGE,
        )
    if exc.code == "state" and str(exc).startswith("cannot read"):
        fail(f"--state: {exc}: give the file an earlier run wrote, or a new path", USAGE)
    if isinstance(cause, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
        fail(f"--url {url!r} is not a URL ({cause}): give one like http://127.0.0.1:8000", USAGE)
    if isinstance(cause, httpx2.TransportError):
        fail(f"http: cannot reach {url} ({cause}): start the broker, or pass --url (BROKER_URL)")
    fix = {
        " (auth.unauthenticated": "pass an auditor or agency token with --token (BROKER_TOKEN)",
        " (auth.token_expired": "ask the broker's administrator for a new token",
        " (auth.token_revoked": "ask the broker's administrator for a new token",
        " (auth.forbidden": "pass an auditor or agency token with --token (BROKER_TOKEN)",
    }
    hint = next((f for marker, f in fix.items() if marker in str(exc)), None)
    fail(f"{exc.code}: {exc}" + (f": {hint}" if hint else ""))
