"""`broker witness ...`: a partner agency's witness, cosigning the broker's log checkpoints.

`init` writes a cosigner key into the keystore and prints the verifier key the broker's
administrator registers (`broker admin witness register`); `run` follows the checkpoints and
cosigns each one it can vouch for (`broker.sdk.witness`). Agency side only: no server package.
Every mistake ends in one `error: ...` line naming the option and the fix; a split view or a
rollback ends the run with exit 1 and one `error: split_view: ...` (or `rollback: ...`) line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from broker.cli.common import REFUSED, USAGE, fail, fail_problem

if TYPE_CHECKING:
    from broker.sdk.witness import Witness

app = typer.Typer(
    no_args_is_help=True,
    help="Run a witness: cosign the broker's log checkpoints after checking them.",
)

KEYSTORE = Annotated[
    Path,
    typer.Option("--keystore", envvar="BROKER_KEYSTORE", help="Keystore folder (git-ignored)"),
]


def _passphrase() -> str:
    from broker.cli.agency import _passphrase as ask

    return ask()


@app.command()
def init(
    name: Annotated[
        str,
        typer.Option(
            "--name",
            help="The witness's name in its signature lines, e.g. hk-ced.example/witness",
        ),
    ],
    keystore: KEYSTORE = Path("keys"),
) -> None:
    """Create a cosigner key (cosignature/v1, Ed25519) and print the verifier key to register."""
    from broker.sdk import witness

    try:
        path, vkey = witness.init(keystore, name, _passphrase())
    except witness.WitnessError as exc:
        option = {"bad_name": "--name", "exists": "--name"}.get(exc.code, "--keystore")
        fix = {
            "bad_name": "choose a name without spaces or '+'",
            "exists": "use the key you have (`broker witness run`), or another --name",
            "passphrase": "set BROKER_KEY_PASSPHRASE to a generated one (26 base32 characters)",
        }.get(exc.code, "give a private folder (chmod 700)")
        if exc.code == "passphrase":
            fail(f"BROKER_KEY_PASSPHRASE: {exc}: {fix}", USAGE)
        fail(f"{option}: {exc}: {fix}", USAGE)
    except OSError as exc:
        fail(
            f"--keystore: cannot write {exc.filename} ({exc.strerror}): give a writable folder",
            USAGE,
        )
    typer.echo(vkey)
    typer.echo(
        f"key written to {path}; have the broker's administrator register the line above: "
        f"broker admin witness register '{vkey}' --agency <your agency>",
        err=True,
    )


@app.command()
def run(
    log_key: Annotated[
        str,
        typer.Option(
            "--log-key",
            envvar="BROKER_LOG_KEY",
            help="The log's verifier key <origin>+<key id>+<base64>, pinned out of band.",
        ),
    ],
    state: Annotated[
        Path, typer.Option("--state", help="Folder keeping the last checkpoint cosigned.")
    ],
    url: Annotated[
        str, typer.Option("--url", envvar="BROKER_URL", help="The broker's base URL.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str,
        typer.Option("--token", envvar="BROKER_TOKEN", help="Your agency's token (brk_...)."),
    ] = "",
    name: Annotated[
        str | None, typer.Option("--name", help="Which witness key, when the keystore has several.")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1, help="Seconds between rounds (without --once).")
    ] = 60.0,
    keystore: KEYSTORE = Path("keys"),
) -> None:
    """Follow the checkpoints: verify, check consistency, cosign, send; one line per cosignature."""
    from broker.sdk import witness
    from broker.sdk.client import BadToken, BrokerClient

    try:
        signer = witness.load(keystore, _passphrase(), name)
    except witness.WitnessError as exc:
        option = "--name" if exc.code == "several_keys" else "--keystore"
        fix = {
            "no_key": "create one with `broker witness init --name NAME`, or pass --keystore",
            "several_keys": "pass --name with one of them",
            "passphrase": "set BROKER_KEY_PASSPHRASE to the keystore's passphrase",
            "insecure": "make the key private (chmod 600)",
        }.get(exc.code, "check the keystore")
        fail(f"{option}: {exc}: {fix}", USAGE)
    try:
        client = BrokerClient(url, token)
    except BadToken as exc:
        fail(f"--token: {exc}: pass your agency's token, or set BROKER_TOKEN", USAGE)
    with client:
        try:
            follower = witness.Witness(client, signer, log_key, state)
        except witness.WitnessError as exc:
            fail(
                f"--log-key: {exc}: give the key as published, <origin>+<key id>+<base64> "
                "(BROKER_LOG_KEY)",
                USAGE,
            )
        if once:
            _round(follower, url, state, stop_on_transient=True)
            return
        _follow(follower, url, state, interval)


def _follow(follower: Witness, url: str, state: Path, interval: float) -> None:
    """Rounds every `interval` seconds until Ctrl-C or SIGTERM (after the round in hand)."""
    import signal
    import threading

    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # as Ctrl-C: a supervisor's SIGTERM stops as cleanly

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        while True:
            _round(follower, url, state, stop_on_transient=False)
            time.sleep(interval)
    except KeyboardInterrupt:
        typer.echo(
            f"stopped; the last checkpoint cosigned is kept in {follower.state_file}", err=True
        )
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _round(follower: Witness, url: str, state: Path, *, stop_on_transient: bool) -> None:
    """One round; transient failures end a --once run, and are told and retried otherwise."""
    import httpx2

    from broker.sdk.client import BrokerAPIError
    from broker.sdk.witness import WitnessError

    try:
        for cosigned in follower.run_once():
            typer.echo(str(cosigned))
    except WitnessError as exc:
        _refused(exc, state)
    except (httpx2.UnsupportedProtocol, httpx2.InvalidURL) as exc:
        fail(
            f"--url {url!r} is not a broker URL ({exc}): give one like http://127.0.0.1:8000", USAGE
        )
    except (httpx2.TransportError, BrokerAPIError) as exc:
        if isinstance(exc, BrokerAPIError) and exc.status < 500 and exc.status != 429:
            _api_refused(exc)
        why = str(exc).strip() or type(exc).__name__
        if stop_on_transient:
            fail(f"cannot reach {url} ({why}): start the broker, or pass --url (BROKER_URL)")
        typer.echo(f"error: {why}: retrying at the next round", err=True)
    except OSError as exc:
        fail(
            f"--state: cannot write {exc.filename} ({exc.strerror}): give a writable folder", USAGE
        )


def _refused(exc: Exception, state: Path) -> NoReturn:
    code = getattr(exc, "code", "witness")
    if code == "state":
        fail(f"--state: {exc}: give the folder this witness's earlier runs used", USAGE)
    if code == "http" and ("auth." in str(exc)):
        fail(f"{code}: {exc}: pass your agency's token with --token (BROKER_TOKEN)", REFUSED)
    if code == "refused" and "log.witness_unknown" in str(exc):
        fail(
            f"{code}: {exc}: have the broker's administrator register this witness for the "
            "token's agency (`broker admin witness register VKEY --agency AGENCY`)"
        )
    fail(f"{code}: {exc}", REFUSED)


def _api_refused(exc: object) -> NoReturn:
    problem = getattr(exc, "problem", {})
    fix = None
    if problem.get("code") in ("auth.unauthenticated", "auth.token_expired", "auth.token_revoked"):
        fix = "pass your agency's token with --token (BROKER_TOKEN)"
    fail_problem(problem, fix)
