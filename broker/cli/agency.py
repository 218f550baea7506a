"""Agency-side commands: `broker keys generate`, `broker send`, `broker status`, `broker inbox ...`.

They need only the base dependencies (no server stack): the private keys stay in the local
keystore, and the broker sees ciphertext.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.common import fail, parse_json, print_json, read_json

URL = Annotated[str, typer.Option("--url", envvar="BROKER_URL", help="Broker base URL")]
TOKEN = Annotated[str, typer.Option("--token", envvar="BROKER_TOKEN", help="API token (brk_...)")]
KEYSTORE = Annotated[
    Path, typer.Option("--keystore", envvar="BROKER_KEYSTORE", help="Keystore folder")
]

keys_app = typer.Typer(no_args_is_help=True, help="The local keystore.")
inbox_app = typer.Typer(no_args_is_help=True, help="Pull, open, verify and acknowledge alerts.")


def _passphrase(confirm: bool = False) -> str:
    value = os.environ.get("BROKER_KEY_PASSPHRASE")
    if value:
        return value
    if not sys.stdin.isatty():
        fail("the keystore needs its passphrase: set BROKER_KEY_PASSPHRASE")
    return str(typer.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm))


def _need_token(token: str | None) -> str:
    if not token:
        fail("--token is required: pass your API token (brk_...) or set BROKER_TOKEN")
    return token


def _keystore(folder: Path) -> Any:
    from broker.sdk.keystore import Keystore

    return Keystore.open(folder, _passphrase())


def _client(url: str, token: str) -> Any:
    from broker.sdk.client import BrokerClient

    return BrokerClient(url, _need_token(token))


def _api_errors(fn: Any) -> Any:
    """Print the broker's problem (code and detail) instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import httpx2

        import schemas
        from broker.crypto.errors import CryptoError
        from broker.sdk.agent import NoUsableKey, ScopeRefused
        from broker.sdk.client import BrokerAPIError

        try:
            return fn(*args, **kwargs)
        except httpx2.TransportError as exc:
            url = kwargs.get("url", "the broker")
            fail(
                f"cannot reach {url} ({type(exc).__name__}: {exc}): "
                "start the broker, or pass --url (BROKER_URL)",
                2,
            )
        except FileNotFoundError as exc:  # no key of that owner in the keystore
            fail(f"{exc}: generate it with `broker keys generate`, or pass --keystore", 2)
        except BrokerAPIError as exc:
            typer.echo(json.dumps(exc.problem, indent=2), err=True)
            raise typer.Exit(2) from exc
        except ScopeRefused as exc:
            fail(f"refused before encrypting: {exc.code}: {exc.detail}", 2)
        except schemas.SchemaError as exc:
            for e in exc.errors:
                typer.echo(f"invalid {e.pointer or '/'}: {e.message}", err=True)
            raise typer.Exit(2) from exc
        except (CryptoError, NoUsableKey) as exc:
            fail(str(exc), 2)

    return wrapper


@keys_app.command("generate")
@_api_errors
def keys_generate(
    owner: Annotated[
        str, typer.Argument(help="Focal point (AGENCY/slug) for sig, agency id for enc")
    ],
    use: Annotated[str, typer.Option(help="sig (Ed25519) or enc (X25519)")] = "sig",
    keystore: KEYSTORE = Path("keys"),
    register: Annotated[
        bool, typer.Option(help="Register the public key (needs an admin token)")
    ] = False,
    url: URL = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option("--token", envvar="BROKER_TOKEN")] = None,
) -> None:
    """Generate a key into the keystore (encrypted PKCS#8, 0600); print the public JWK and kid."""
    from broker.sdk.keystore import Keystore

    if use not in ("sig", "enc"):
        fail(f"--use {use!r} is not a key use: pass sig or enc")
    if register and not token:
        fail("--register needs --token (an admin token) or BROKER_TOKEN")
    store = Keystore.open(keystore, _passphrase(confirm=True))
    path, key = store.generate(owner, use)
    out: dict[str, Any] = {"kid": key.kid, "jwk": key.public.jwk, "file": str(path)}
    if register and token:
        agency, _, _slug = owner.partition("/")
        with _client(url, token) as client:
            body = {
                "agency_id": agency,
                "focal_point_id": owner if "/" in owner else None,
                "jwk": key.public.jwk,
            }
            out["registered"] = client._call("POST", "/v1/admin/keys", json=body)["status"]
    print_json(out)


@_api_errors
def send(
    body: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Alert body (JSON)")],
    fp: Annotated[str, typer.Option("--from", help="Your focal point id, e.g. VN-GDC/fp-hcm-01")],
    to: Annotated[list[str], typer.Option("--to", help="Recipient agency; repeat")],
    agreement: Annotated[str, typer.Option()],
    offence: Annotated[str, typer.Option()],
    operation: Annotated[str | None, typer.Option()] = None,
    kind: Annotated[str, typer.Option(help="alert or feedback")] = "alert",
    priority: Annotated[str, typer.Option()] = "routine",
    handling: Annotated[str, typer.Option()] = "TLP:AMBER",
    extra: Annotated[
        str | None,
        typer.Option(help="Extra routing members as JSON (feedback: in_reply_to, outcome, ...)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only ask whether the broker would accept")
    ] = False,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
    receipts: Annotated[Path, typer.Option(help="Where receipts are kept")] = Path("sent"),
) -> None:
    """Sign, encrypt and send an alert; keep the broker's receipt."""

    from broker.sdk import agent

    _need_token(token)
    content = read_json(body, "BODY")
    routing_extra = parse_json(extra, "--extra") if extra else None
    store = _keystore(keystore)
    with _client(url, token) as client:
        draft = agent.compose(
            client,
            store.signing_key(fp),
            sender_fp=fp,
            recipients=to,
            agreement=agreement,
            offence=offence,
            body=content,
            operation=operation,
            kind=kind,
            priority=priority,
            handling=handling,
            extra=routing_extra,
        )
        if dry_run:
            print_json({"decision": "accept", "mid": draft.mid, "routing": draft.routing})
            return
        answer = agent.send(client, draft)
    receipts.mkdir(parents=True, exist_ok=True)
    (receipts / f"{draft.mid}.json").write_text(
        json.dumps({"routing": draft.routing, **answer}, indent=2)
    )
    print_json(
        {
            "mid": draft.mid,
            "accepted_at": answer["accepted_at"],
            "receipt": str(receipts / f"{draft.mid}.json"),
        }
    )


@_api_errors
def status(mid: str, url: URL = "http://127.0.0.1:8000", token: TOKEN = "") -> None:
    """Delivery and acknowledgement of a message you sent, per recipient."""
    with _client(url, token) as client:
        print_json(client.status(mid))


@inbox_app.command("pull")
@_api_errors
def inbox_pull(
    agency: Annotated[str, typer.Option(help="Your agency id")],
    state: Annotated[Path, typer.Option(help="Folder for the cursor and the evidence")] = Path(
        "inbox"
    ),
    wait: Annotated[float, typer.Option(help="Long-poll seconds when the inbox is empty")] = 0,
    ack_key: Annotated[
        str | None, typer.Option(help="Owner of the signing key for acks (default: the agency)")
    ] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
) -> None:
    """Follow the cursor: open and verify every envelope, keep the evidence, acknowledge."""
    _need_token(token)
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from broker.sdk.agent import InboxPuller

    with (
        _client(url, token) as client,
        Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True) as bar,
    ):
        task = bar.add_task("pulling", total=None)
        puller = InboxPuller(client, _keystore(keystore), agency, state, ack_owner=ack_key)
        results = puller.pull(
            wait=wait, on_item=lambda r: bar.update(task, description=f"{r.seq}: {r.status}")
        )
    print_json(
        [
            {"seq": r.seq, "mid": r.mid, "sender": r.sender, "status": r.status, "reason": r.reason}
            for r in results
        ]
    )


@inbox_app.command("show")
def inbox_show(
    mid: Annotated[str | None, typer.Argument(help="One alert; all when omitted")] = None,
    state: Annotated[Path, typer.Option(help="Folder given to `inbox pull`")] = Path("inbox"),
) -> None:
    """Alerts pulled so far, with their verification result (and the decrypted content)."""
    from broker.sdk.agent import stored_alerts

    entries = [e for e in stored_alerts(state) if mid is None or e["mid"] == mid]
    if mid is not None and not entries:
        fail(f"no alert {mid} in {state}")
    if mid is None:
        entries = [
            {k: v for k, v in e.items() if k != "alert"}
            | {"title": e.get("alert", {}).get("body", {}).get("title")}
            for e in entries
        ]
    print_json(entries)
