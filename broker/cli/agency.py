"""Agency-side commands: `broker keys ...`, `broker send`, `broker status`, `broker inbox ...`.

They need only the base dependencies (no server stack): the private keys stay in the local
keystore, and the broker sees ciphertext. Signing keys are chosen by what the broker's directory
shows active for the signer (`Keystore.with_directory`), never by which file is newest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


def _keystore(folder: Path, confirm: bool = False) -> Any:
    from broker.sdk.keystore import Keystore

    return Keystore.open(folder, _passphrase(confirm))


def _client(url: str, token: str) -> Any:
    from broker.sdk.client import BrokerClient

    return BrokerClient(url, _need_token(token))


def _api_errors(fn: Any) -> Any:
    """Print the broker's problem (code and detail), or one line, instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            _explain(exc, kwargs.get("url", "the broker"))
            raise

    return wrapper


def _explain(exc: Exception, url: str) -> None:
    """End with the message for `exc` if it is one the agency side expects; else return."""
    # Imported here, when something went wrong: the commands that need none of them start faster.
    import httpx2

    from broker import schemas
    from broker.crypto.errors import CryptoError
    from broker.sdk.agent import NoUsableKey, ScopeRefused
    from broker.sdk.client import BrokerAPIError
    from broker.sdk.keystore import KeystoreError

    if isinstance(exc, httpx2.TransportError):
        fail(
            f"cannot reach {url} ({type(exc).__name__}: {exc}): "
            "start the broker, or pass --url (BROKER_URL)",
            2,
        )
    if isinstance(exc, FileNotFoundError):  # no key of that owner in the keystore
        fail(f"{exc}: generate it with `broker keys generate`, or pass --keystore", 2)
    if isinstance(exc, BrokerAPIError):
        typer.echo(json.dumps(exc.problem, indent=2), err=True)
        raise typer.Exit(2) from exc
    if isinstance(exc, ScopeRefused):
        fail(f"refused before encrypting: {exc.code}: {exc.detail}", 2)
    if isinstance(exc, schemas.SchemaError):
        for e in exc.errors:
            typer.echo(f"invalid {e.pointer or '/'}: {e.message}", err=True)
        raise typer.Exit(2) from exc
    if isinstance(exc, CryptoError | NoUsableKey | KeystoreError):
        fail(str(exc), 2)


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
    if use not in ("sig", "enc"):
        fail(f"--use {use!r} is not a key use: pass sig or enc")
    if register and not token:
        fail("--register needs --token (an admin token) or BROKER_TOKEN")
    store = _keystore(keystore, confirm=True)
    path, key = store.generate(owner, use)
    out: dict[str, Any] = {"kid": key.kid, "jwk": key.public.jwk, "file": str(path)}
    if register and token:
        out["registered"] = _register(store, path, owner, key.public.jwk, url, token)
    print_json(out)


def _register(store: Any, path: Path, owner: str, jwk: dict[str, Any], url: str, token: str) -> str:
    """Register the new key's public half; if that fails, leave no usable key behind."""
    import httpx2

    from broker.sdk.client import BrokerAPIError

    body = {
        "agency_id": owner.split("/")[0],
        "focal_point_id": owner if "/" in owner else None,
        "jwk": jwk,
    }
    try:
        with _client(url, token) as client:
            return str(client._call("POST", "/v1/admin/keys", json=body)["status"])
    except BrokerAPIError as exc:
        if exc.status < 500:  # refused: certainly not registered
            store.discard(path)
            fail(
                f"registration refused ({exc.code}: {exc.problem.get('detail', '')}): the new key "
                "was deleted; fix that and run the command again",
                2,
            )
        _set_aside(store, path, f"the broker failed ({exc.code})")
    except httpx2.ConnectError as exc:  # nothing was sent
        store.discard(path)
        fail(
            f"cannot reach {url} ({exc}): the new key was deleted; start the broker, "
            "or pass --url (BROKER_URL), and run the command again",
            2,
        )
    except httpx2.TransportError as exc:
        _set_aside(store, path, f"cannot reach {url} ({type(exc).__name__})")
    except BaseException:
        _set_aside(store, path, "interrupted")
        raise


def _set_aside(store: Any, path: Path, why: str) -> NoReturn:
    """Whether the broker registered the key is unknown: keep it, but where nothing uses it (an
    encryption key registered without its private half would take messages nobody can open)."""
    aside = store.set_aside(path)
    fail(
        f"registration not confirmed: {why}. The new key is kept aside, unused, as {aside}: "
        f"if the directory has it, rename it back to {path.name}; if not, delete it and run "
        "the command again",
        2,
    )


@keys_app.command("list")
@_api_errors
def keys_list(
    owner: Annotated[
        str | None, typer.Argument(help="Only the keys of this focal point or agency")
    ] = None,
    keystore: KEYSTORE = Path("keys"),
    url: URL = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="BROKER_TOKEN", help="Any API token: reads the directory"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """The keystore's keys: kid, use, whether the directory has them active, validity, and
    which one `broker send` signs with. Needs no passphrase."""
    import time

    from broker.sdk.keystore import Keystore, StoredKey, choose, refusal

    # No passphrase: the files' names say owner, use and kid.
    stored = Keystore(keystore, "").stored_keys(owner)
    published: dict[str, dict[str, Any]] | None = None
    note: str | None = None
    if not stored:
        note = f"no keys in {keystore}" + (f" for {owner}" if owner else "")
    elif not token:
        note = "not checked against the directory: pass --token (BROKER_TOKEN)"
    else:
        note, published = _directory(url, token, sorted({k.agency for k in stored}))
    now = int(time.time())
    signs: set[str] = set()  # per owner, the key `send` would choose
    if published is not None:
        for who in {k.owner for k in stored}:
            sig = [k for k in stored if k.owner == who and k.use == "sig"]
            if chosen := choose(sig, published, now):
                signs.add(chosen.kid)

    def row(k: StoredKey) -> dict[str, Any]:
        entry: dict[str, Any] = {"owner": k.owner, "use": k.use, "kid": k.kid}
        if published is None:
            return entry | {"registered": None, "status": "unknown", "file": str(k.path)}
        jwk = published.get(k.kid)
        why = refusal(k, jwk, now)
        entry |= {
            "registered": jwk is not None,
            "status": "active" if why is None else why,
            "not_before": _iso(jwk.get("nbf")) if jwk else None,
            "not_after": _iso(jwk.get("exp")) if jwk else None,
        }
        if k.use == "sig":
            entry["signs"] = k.kid in signs
        return entry | {"file": str(k.path)}

    rows = [row(k) for k in sorted(stored, key=lambda k: (k.owner, k.use))]
    if as_json:
        print_json(rows)
    else:
        _table(rows)
    if note:
        typer.echo(f"note: {note}", err=True)


def _directory(
    url: str, token: str, agencies: list[str]
) -> tuple[str | None, dict[str, dict[str, Any]] | None]:
    """The directory's entries of `agencies`' keys by kid, or why they could not be read."""
    import httpx2

    from broker.sdk.client import BrokerAPIError

    published: dict[str, dict[str, Any]] = {}
    try:
        with _client(url, token) as client:
            for agency in agencies:
                published.update({k["kid"]: k for k in client.jwks(agency) if "kid" in k})
    except BrokerAPIError as exc:
        return f"the directory refused ({exc.code}): check --token", None
    except httpx2.TransportError as exc:
        return f"cannot reach {url} ({type(exc).__name__}): start the broker, or pass --url", None
    return None, published


def _iso(epoch: Any) -> str | None:
    import datetime as dt

    if not isinstance(epoch, int):
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _table(rows: list[dict[str, Any]]) -> None:
    """Aligned columns, never cut or folded (a kid is copied into --kid): a line longer than
    the terminal wraps as a whole, as `ls -l` does."""
    header = ("owner", "use", "kid", "status", "valid from", "until", "signs")
    lines = [header] + [
        (
            r["owner"],
            r["use"],
            r["kid"],
            r["status"],
            (r.get("not_before") or "")[:10],
            (r.get("not_after") or "")[:10],
            "yes" if r.get("signs") else "",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


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
    kid: Annotated[
        str | None,
        typer.Option(
            "--kid",
            help="Sign with this key of --from (default: the one the directory shows active; "
            "see `broker keys list`)",
        ),
    ] = None,
    receipts: Annotated[Path, typer.Option(help="Where receipts are kept")] = Path("sent"),
) -> None:
    """Sign, encrypt and send an alert; keep the broker's receipt."""

    from broker.sdk import agent

    _need_token(token)
    content = read_json(body, "BODY")
    routing_extra = parse_json(extra, "--extra") if extra else None
    store = _keystore(keystore)
    with _client(url, token) as client:
        # Only a key the broker would accept: a dry run catches an unregistered one too.
        signer = store.with_directory(client).signing_key(fp, kid)
        draft = agent.compose(
            client,
            signer,
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
            print_json(
                {
                    "decision": "accept",
                    "mid": draft.mid,
                    "kid": signer.kid,
                    "routing": draft.routing,
                }
            )
            return
        answer = agent.send(client, draft)
    receipts.mkdir(parents=True, exist_ok=True)
    (receipts / f"{draft.mid}.json").write_text(
        json.dumps({"routing": draft.routing, **answer}, indent=2)
    )
    print_json(
        {
            "mid": draft.mid,
            "kid": signer.kid,
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
        store = _keystore(keystore).with_directory(client)  # acks signed with an active key
        puller = InboxPuller(client, store, agency, state, ack_owner=ack_key)
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
