"""Agency-side commands: `broker keys ...`, `broker send`, `broker status`, `broker inbox ...`.

They need only the base dependencies (no server stack): the private keys stay in the local
keystore, and the broker sees ciphertext. Signing keys are chosen by what the broker's directory
shows active for the signer (`Keystore.with_directory`), never by which file is newest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from broker.cli.common import (
    USAGE,
    fail,
    fail_problem,
    failure_details,
    parse_json,
    print_json,
    read_json,
)
from broker.cli.output import AS_JSON, emit
from broker.schemas import vocab

URL = Annotated[str, typer.Option("--url", envvar="BROKER_URL", help="Broker base URL")]
TOKEN = Annotated[str, typer.Option("--token", envvar="BROKER_TOKEN", help="API token (brk_...)")]
KEYSTORE = Annotated[
    Path, typer.Option("--keystore", envvar="BROKER_KEYSTORE", help="Keystore folder")
]

# Options shared by the commands that sign and send (`send`, `feedback`).
DRY_RUN = Annotated[
    bool, typer.Option("--dry-run", help="Only ask whether the broker would accept")
]
KID = Annotated[
    str | None,
    typer.Option(
        "--kid",
        help="Sign with this key of --from (default: the one the directory shows active; "
        "see `broker keys list`)",
    ),
]
RECEIPTS = Annotated[Path, typer.Option(help="Folder where the broker's signed receipts are kept")]
EXPIRES = Annotated[
    str,
    typer.Option(
        "--expires",
        help="How long partners may fetch it: 90m, 12h or 7d, at most 30d; a copy still "
        "unfetched then is withdrawn from its inbox",
    ),
]
_UNITS = {"m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 30 * 86400  # the broker refuses an exp further than 30 days after iat


def ttl_seconds(expires: str) -> int:
    """`--expires` in seconds, or one line naming the option and the fix."""
    number, unit = expires[:-1], expires[-1:]
    seconds = int(number) * _UNITS[unit] if number.isdigit() and unit in _UNITS else 0
    if not 0 < seconds <= MAX_TTL_S:
        fail(
            f"--expires {expires!r}: give minutes, hours or days, e.g. 90m, 12h or 7d (at most 30d)",
            USAGE,
        )
    return seconds


keys_app = typer.Typer(no_args_is_help=True, help="The local keystore.")
inbox_app = typer.Typer(no_args_is_help=True, help="Pull, open, verify and acknowledge alerts.")


def _passphrase(confirm: bool = False) -> str:
    value = os.environ.get("BROKER_KEY_PASSPHRASE")
    if value:
        return value
    if not sys.stdin.isatty():
        fail(
            "the keystore needs its passphrase: set BROKER_KEY_PASSPHRASE (or run the command "
            "in a terminal to be asked for it)",
            USAGE,
        )
    return str(typer.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm))


# The token each command needs, for the messages (by the command's function).
_TOKEN_KINDS = {
    "send": "a focal point token bound to --from",
    "feedback": "a focal point token bound to --from",
    "status": "the token of the focal point or agency that sent it",
    "recall": "a focal point token bound to --from",
    "agreements": "a focal point or agency token",
    "scope": "a focal point or agency token",
    "inbox_pull": "an agency token of --agency",
    "keys_generate": "an admin token",
    "keys_list": "any token of this broker",
}


class _Running:
    command = ""  # the agency command running (`_api_errors` sets it), for the messages


def _token_kind() -> str:
    return _TOKEN_KINDS.get(_Running.command, "an API token")


def _need_token(token: str | None) -> str:
    value = (token or "").strip()
    if not value:
        fail(f"--token is empty: pass {_token_kind()} (brk_...), or set BROKER_TOKEN", USAGE)
    # What no token has (a space, a line break, non-ASCII) would fail as an HTTP header.
    if not value.isascii() or not value.isprintable() or " " in value:
        fail(
            "--token holds spaces or characters no token has: pass the token (brk_...) as it "
            "was issued, or fix BROKER_TOKEN",
            USAGE,
        )
    return value


def _keystore(folder: Path, confirm: bool = False) -> Any:
    from broker.sdk.keystore import Keystore

    return Keystore.open(folder, _passphrase(confirm))


def _client(url: str, token: str) -> Any:
    from broker.sdk.client import BrokerClient

    return BrokerClient(url, _need_token(token))


def _check_agency(client: Any, store: Any, agency: str) -> None:
    """Before pulling: the token is `agency`'s own and the keystore holds its decryption key.

    Pulled with another agency's token or without its key, every alert would be acknowledged
    as unreadable (`decrypt_failed`) and the sender told so.
    """
    import httpx2

    try:
        me: dict[str, Any] | None = client.me()
    except httpx2.TransportError:
        me = None  # told (or, with --follow, retried) by the pull itself
    if me is not None and me.get("role") != "agency":
        fail(
            f"`broker inbox pull` needs an agency token, and --token is {_who(me)}: "
            f"pass {agency}'s agency token",
            USAGE,
        )
    if me is not None and me.get("agency_id") != agency:
        owner = me.get("agency_id")
        fail(
            f"--agency {agency}: the token belongs to {owner}: pass --agency {owner}, "
            f"or {agency}'s own agency token",
            USAGE,
        )
    if not store.stored_keys(agency, "enc"):
        fail(
            f"no encryption key of {agency} in {store.folder}: pass --keystore with the folder "
            f"that holds it, or generate one with `broker keys generate {agency} --use enc "
            "--register`",
            USAGE,
        )


def _api_errors(fn: Any) -> Any:
    """Every error the agency side expects ends in one line (`_explain`) instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _Running.command = fn.__name__
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            from broker.sdk.client import BrokerAPIError

            trace = "".join(traceback.format_exception(exc)).rstrip()
            # A refusal's detail is its problem document; anything else's, its traceback.
            with failure_details(None if isinstance(exc, BrokerAPIError) else trace):
                _explain(exc, kwargs)
            raise
        finally:
            _Running.command = ""

    return wrapper


def _explain(exc: Exception, options: dict[str, Any]) -> None:
    """End with the one line for `exc` if it is one the agency side expects; else return (the
    command group then says "unexpected ...", or with --verbose shows the traceback).

    `options`: the command's parameters, to name the option that set a refused value.
    """
    # Imported here, when something went wrong: the commands that need none of them start faster.
    import httpx2

    from broker import schemas
    from broker.crypto.errors import CryptoError
    from broker.sdk.agent import NoUsableKey, ScopeRefused
    from broker.sdk.client import BadToken, BrokerAPIError
    from broker.sdk.directory import DirectoryRefused
    from broker.sdk.keystore import KeystoreError

    url = str(options.get("url") or "the broker")
    if isinstance(exc, BadToken):
        fail(f"--token: {exc}: pass {_token_kind()} or set BROKER_TOKEN", USAGE)
    if isinstance(exc, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
        fail(
            f"--url {url!r} is not a broker URL ({str(exc).rstrip('.')}): give one like "
            "http://127.0.0.1:8000",
            USAGE,
        )
    if isinstance(exc, httpx2.TimeoutException):
        fail(f"{url} did not answer in time ({type(exc).__name__}): try again, or check --url")
    if isinstance(exc, httpx2.TransportError):
        why = str(exc).strip() or type(exc).__name__
        fail(f"cannot reach {url} ({why}): start the broker, or pass --url (BROKER_URL)")
    if isinstance(exc, BrokerAPIError):
        fail_problem(exc.problem, _fix(exc, options))
    if isinstance(exc, ScopeRefused):
        hint = _scope_hint(exc.code, options)
        refused = f"{exc.code}: {exc.detail}; nothing was sent"
        fail(
            f"{hint} ({refused})"
            if hint
            else f"{refused}: check the options against your agreements (`broker agreements`)"
        )
    if isinstance(exc, schemas.SchemaError):
        fail(_field_errors(exc, options), USAGE)
    if isinstance(exc, KeystoreError):  # no passphrase, a wrong one, no usable signing key
        fail(str(exc), USAGE)
    if isinstance(exc, NoUsableKey):
        fail(f"{exc}: its administrator must register one before it can be sent alerts")
    if isinstance(exc, CryptoError):
        fail(f"{exc.code}: {exc.detail}")
    if isinstance(exc, DirectoryRefused):
        fail(f"{exc}: the broker's key directory cannot be trusted; nothing was sent")
    if isinstance(exc, OSError) and exc.filename:  # the keystore, --state, --receipts
        fail(
            f"{exc.filename}: {exc.strerror or exc}: check the path and its permissions "
            "(--keystore, --state, --receipts)",
            USAGE,
        )


def _value(options: dict[str, Any], name: str) -> Any:
    value = options.get(name)
    return getattr(value, "value", value)  # an enum choice: its string


def _whoami(options: dict[str, Any]) -> dict[str, Any] | None:
    """What the broker says the token is, or None if it cannot say."""
    try:
        with _client(str(options.get("url")), str(options.get("token") or "")) as client:
            me: dict[str, Any] = client.me()
            return me
    except Exception:  # only a hint: the refusal itself is already known
        return None


def _who(me: dict[str, Any]) -> str:
    """`an agency token of HK-CED`, `a focal point token of VN-GDC/fp-hcm-01`."""
    role = str(me.get("role")).replace("_", " ")
    owner = me.get("focal_point_id") or me.get("agency_id")
    article = "an" if role[:1] in tuple("aeiou") else "a"
    return f"{article} {role} token" + (f" of {owner}" if owner else "")


def _fix(exc: Any, options: dict[str, Any]) -> str | None:
    """The fix a refusal's code implies: which token, which option, when to try again."""
    code: str = exc.code
    kind = _token_kind()
    if code == "auth.unauthenticated":
        return f"this broker does not know the token: pass {kind} with --token (BROKER_TOKEN)"
    if code in ("auth.token_expired", "auth.token_revoked"):
        return f"ask the broker's administrator for a new token: {kind}"
    if code == "auth.forbidden":
        me = _whoami(options)
        return f"this command needs {kind}" + (f", and --token is {_who(me)}" if me else "")
    if code == "auth.sender_mismatch" or (
        code == "recall.key_not_signer" and options.get("kid") is None
    ):
        me = _whoami(options)
        fp = _value(options, "fp")
        owner = me.get("focal_point_id") if me else None
        return f"--from {fp}, but the token belongs to {owner or 'another focal point'}: pass " + (
            f"--from {owner}, or {fp}'s token" if owner else f"{fp}'s token"
        )
    if code.startswith("scope."):
        return _scope_hint(code, options)
    if code.startswith("key."):
        return "see `broker keys list`, or pass --kid"
    if code == "rate.limited":
        wait = getattr(exc, "retry_after", None)
        return f"wait{f' {wait} s' if wait else ''} and run the command again"
    if code == "service.unavailable" or exc.status >= 500:
        return "the broker cannot serve this now: try again later, or tell its operators"
    if code == "recall.not_sender":
        return "recall only the messages your agency sent: check the MID"
    if code == "request.not_found" and options.get("mid"):
        return "check the MID: `broker send` printed it, and --receipts keeps one file per MID"
    return None


def _scope_hint(code: str, options: dict[str, Any]) -> str | None:
    """For a scope refusal of `send`: the option at fault and, for a misspelling, what it
    likely meant (`difflib`) among the agreements, agencies and offences the broker lists."""
    import difflib

    agreement, to = _value(options, "agreement"), options.get("to") or []
    try:
        with _client(str(options.get("url")), str(options.get("token") or "")) as client:
            views = client.agreements()
            directory = {k.get("agency") for k in client.jwks()}
    except Exception:  # only a hint
        return None
    view = next((v for v in views if v.get("id") == agreement), None)

    def close(word: str, among: set[str]) -> str:
        found = difflib.get_close_matches(word, sorted(among), n=1)
        return f", did you mean {found[0]}?" if found else ""

    if code == "scope.agreement_unknown":
        ids = {str(v.get("id")) for v in views}
        listed = ", ".join(sorted(ids)) or "none"
        return f"--agreement {agreement}: not an agreement of yours{close(agreement, ids)} " + (
            f"(yours: {listed})"
        )
    if view is None:
        return None
    parties = {str(d.get("to")) for d in view.get("directions", [])}
    if code == "scope.recipient_not_party":
        known = {a for a in directory if a} | {
            str(d.get("to")) for v in views for d in v.get("directions", [])
        }
        for agency in to:
            if agency in parties:
                continue
            if agency not in known:
                return f"--to {agency}: unknown agency{close(agency, known)}"
            return (
                f"--to {agency}: not a party to {agreement}, whose other parties are "
                f"{', '.join(sorted(parties))}"
            )
    if code == "scope.offence_not_covered":
        offence = _value(options, "offence")
        allowed = [
            f"{', '.join(d.get('offences') or []) or 'nothing'} to {d.get('to')}"
            for d in view.get("directions", [])
            if d.get("to") in to
        ]
        return f"--offence {offence}: {agreement} lets you send {'; '.join(allowed)}"
    if code in ("scope.operation_unknown", "scope.operation_other_agreement"):
        operation = _value(options, "operation")
        ops = {str(o.get("id")) for o in view.get("operations", [])}
        return f"--operation {operation}: not an operation of {agreement}{close(operation, ops)}"
    if code == "scope.handling_above_agreement":
        return f"--handling: {agreement} allows at most {view.get('max_handling')}"
    return None


# Which option set each routing member (`send`), and what a valid value looks like.
_ROUTING_OPTIONS = {
    "recipients": "--to",
    "agreement": "--agreement",
    "offence": "--offence",
    "operation": "--operation",
    "kind": "--kind",
    "priority": "--priority",
    "handling": "--handling",
    "sender_fp": "--from",
    "sender": "--from",
    "supersedes": "--supersedes",
}
_PARAMETERS = {"--to": "to", "--from": "fp"} | {
    o: o[2:]
    for o in (
        "--agreement",
        "--offence",
        "--operation",
        "--kind",
        "--priority",
        "--handling",
        "--supersedes",
    )
}
_SHAPES = {
    "--to": "an agency id like HK-CED",
    "--from": "a focal point id <agency>/<name> like VN-GDC/fp-hcm-01",
    "--agreement": "an agreement id in capitals like VN-HK-CMAA-2013",
    "--operation": "an operation id in capitals like TWIN-GUARDIAN-II",
    "--supersedes": "the mid `broker send` printed for the message you correct",
}
_FORMAT = re.compile(r"is not a valid (?P<format>[\w-]+)")


def _field_errors(exc: Any, options: dict[str, Any]) -> str:
    """Every invalid field of a refused routing header or body in one line, each named by the
    option that set it, or by the BODY file and the field's JSON Pointer."""
    routing = exc.schema.endswith("routing")
    content: Any = None
    body = options.get("body")
    if not routing and isinstance(body, Path):
        with contextlib.suppress(OSError, ValueError):
            content = json.loads(body.read_text(encoding="utf-8"))
    parts = [
        _routing_field(e.pointer, e.message, options)
        if routing
        else _body_field(e.pointer, e.message, content)
        for e in exc.errors[:8]
    ]
    more = f"; and {len(exc.errors) - 8} more" if len(exc.errors) > 8 else ""
    where = "" if routing else f"BODY {body}: " if body else "the body: "
    return where + "; ".join(parts) + more + ("" if routing else ": fix the file")


def _routing_field(pointer: str, message: str, options: dict[str, Any]) -> str:
    path = pointer.split("/")[1:]
    member = path[0] if path else ""
    extra = options.get("extra") or ""
    option = _ROUTING_OPTIONS.get(member)
    if option is None:
        if member and f'"{member}"' in extra:
            return f"--extra {member}: {message}"
        if member == "subject_types":
            return f"BODY: its subjects' types {message}"
        return f"routing {pointer or '/'}: {message}"
    value = _value(options, _PARAMETERS[option])
    if option == "--to" and len(path) > 1 and path[1].isdigit() and isinstance(value, list):
        recipients = sorted(value)  # the header lists them sorted
        index = int(path[1])
        value = recipients[index] if index < len(recipients) else value
    if message.startswith("does not match") and option in _SHAPES:
        message = f"is not {_SHAPES[option]}"
    shown = " ".join(map(str, value)) if isinstance(value, list) else value
    return f"{option} {shown}: {message}" if shown not in (None, "") else f"{option}: {message}"


def _body_field(pointer: str, message: str, content: Any) -> str:
    from broker.schemas.formats import explain

    value: Any = content
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            value = None
            break
    line = f"{pointer or '/'}"
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        line += f" {json.dumps(value, ensure_ascii=False)[:60]}"
    line += f" {message}"
    if (m := _FORMAT.fullmatch(message)) and (hint := explain(m["format"], value)):
        line += f": {hint}"
    return line


@keys_app.command("generate")
@_api_errors
def keys_generate(
    owner: Annotated[
        str, typer.Argument(help="Focal point (AGENCY/slug) for sig, agency id for enc")
    ],
    use: Annotated[str, typer.Option(help="sig (Ed25519) or enc (X25519)")] = "sig",
    keystore: KEYSTORE = Path("keys"),
    register: Annotated[
        bool,
        typer.Option(help="Register the public key (an admin's or the agency registrar's token)"),
    ] = False,
    url: URL = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="BROKER_TOKEN", help="An admin or registrar token, for --register"
        ),
    ] = None,
) -> None:
    """Generate a key into the keystore (encrypted PKCS#8, 0600); print the public JWK and kid."""
    if use not in ("sig", "enc"):
        fail(f"--use {use!r} is not a key use: pass sig or enc", USAGE)
    if register and not token:
        fail("--register needs --token (an admin or registrar token) or BROKER_TOKEN", USAGE)
    if register:
        _need_token(token)  # before a key is made that could not be registered
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
            fix = _fix(exc, {"url": url, "token": token}) if exc.code.startswith("auth.") else None
            fail(
                f"registration refused ({exc.code}: {exc.problem.get('detail', '')}): the new key "
                f"was deleted; {fix or 'fix that'} and run the command again",
            )
        _set_aside(store, path, f"the broker failed ({exc.code})")
    except httpx2.ConnectError as exc:  # nothing was sent
        store.discard(path)
        fail(
            f"cannot reach {url} ({exc}): the new key was deleted; start the broker, "
            "or pass --url (BROKER_URL), and run the command again",
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
    as_json: AS_JSON = None,
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
    emit(rows, as_json, lambda: _table(rows))
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
    """The keys as aligned columns (validity as dates: keys are valid for months)."""
    from broker.cli import output

    output.table(
        [
            r
            | {
                "valid from": (r.get("not_before") or "")[:10],
                "until": (r.get("not_after") or "")[:10],
            }
            for r in rows
        ],
        [
            ("owner", "owner"),
            ("use", "use"),
            ("kid", "kid"),
            ("status", "status"),
            ("valid from", "valid from"),
            ("until", "until"),
            ("signs", "signs"),
        ],
    )


@_api_errors
def send(
    body: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="Message body (JSON; schema broker/schemas/v1/body/)"
        ),
    ],
    fp: Annotated[str, typer.Option("--from", help="Your focal point id, e.g. VN-GDC/fp-hcm-01")],
    to: Annotated[
        list[str],
        typer.Option(
            "--to",
            help="Recipient agency id; repeat for several. `--to members` (with --operation): "
            "every member of the operation now",
        ),
    ],
    agreement: Annotated[
        str,
        typer.Option(help="Agreement id, e.g. VN-HK-CMAA-2013 (see `broker agreements`)"),
    ],
    offence: Annotated[
        vocab.Offence, typer.Option(help="Offence code; the agreement must cover it")
    ],
    operation: Annotated[
        str | None, typer.Option(help="Operation id under the agreement, if any")
    ] = None,
    kind: Annotated[
        vocab.MessageKind,
        typer.Option(help="alert, or feedback (easier: `broker feedback`)"),
    ] = "alert",
    priority: Annotated[vocab.Priority, typer.Option(help="How fast it needs attention")] = (
        "routine"
    ),
    handling: Annotated[
        vocab.Handling,
        typer.Option(help="TLP 2.0 marking; at most the agreement's max_handling"),
    ] = "TLP:AMBER",
    extra: Annotated[
        str | None,
        typer.Option(help="Extra routing members as JSON (feedback: in_reply_to, outcome, ...)"),
    ] = None,
    dry_run: DRY_RUN = False,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
    kid: KID = None,
    receipts: RECEIPTS = Path("sent"),
    expires: EXPIRES = "7d",
    supersedes: Annotated[
        str | None,
        typer.Option(
            help="Send a correction of your earlier message MID (same agreement and recipients); "
            "recipients see the earlier one as superseded"
        ),
    ] = None,
    as_json: AS_JSON = None,
) -> None:
    """Sign, encrypt and send an alert; keep the broker's receipt."""

    from broker.sdk import agent

    _need_token(token)
    ttl_s = ttl_seconds(expires)
    content = read_json(body, "BODY")
    audience = agent.MEMBERS if to == [agent.MEMBERS] else None
    if audience and operation is None:
        fail("--to members needs --operation: the operation whose members to address", USAGE)
    if agent.MEMBERS in to and not audience:
        fail("--to members stands alone: it addresses every member, drop the other --to", USAGE)
    # Every mistake in the body is reported before anything is asked of the broker.
    agent.check_body(content, kind=kind)
    routing_extra = parse_json(extra, "--extra") if extra else None
    if supersedes is not None:
        routing_extra = {**(routing_extra or {}), "supersedes": supersedes}
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
            audience=audience,
            extra=routing_extra,
            ttl_s=ttl_s,
        )
        if dry_run:
            report_dry_run(draft, signer.kid, as_json)
            return
        answer = agent.send(client, draft)
    report_sent(draft, signer.kid, answer, receipts, as_json)


def report_dry_run(draft: Any, kid: str, as_json: bool | None) -> None:
    """What `--dry-run` found: the broker would accept this routing, signed with `kid`."""
    from broker.cli import output

    out = {"decision": "accept", "mid": draft.mid, "kid": kid, "routing": draft.routing}
    r = draft.routing
    output.emit(
        out,
        as_json,
        lambda: output.fields(
            [
                ("decision", "accept (nothing was sent)"),
                ("mid", draft.mid),
                ("signing key", kid),
                ("from", r["sender_fp"]),
                ("to", r["recipients"]),
                ("agreement", r["agreement"]),
                ("operation", r["operation"]),
                ("offence", r["offence"]),
                ("subject types", r["subject_types"]),
                ("priority", r["priority"]),
                ("handling", r["handling"]),
                ("in reply to", r.get("in_reply_to")),
                ("outcome", r.get("outcome")),
                ("commodity", r.get("commodity")),
                ("quantity band", r.get("quantity_band")),
                ("expires", output.iso(r["exp"])),
            ]
        ),
    )


def report_sent(
    draft: Any, kid: str, answer: dict[str, Any], receipts: Path, as_json: bool | None
) -> None:
    """Keep the receipt in `receipts/<mid>.json` and say what was sent."""
    from broker.cli import output

    receipts.mkdir(parents=True, exist_ok=True)
    kept = receipts / f"{draft.mid}.json"
    kept.write_text(json.dumps({"routing": draft.routing, **answer}, indent=2))
    out = {"mid": draft.mid, "kid": kid, "accepted_at": answer["accepted_at"], "receipt": str(kept)}
    output.emit(
        out,
        as_json,
        lambda: output.fields(
            [
                ("mid", draft.mid),
                ("to", draft.routing["recipients"]),
                ("accepted at", output.iso(answer["accepted_at"])),
                ("signing key", kid),
                ("receipt", str(kept)),
            ]
        ),
    )


@_api_errors
def status(
    mid: Annotated[str, typer.Argument(help="The message id `broker send` printed")],
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    evidence: Annotated[
        Path | None,
        typer.Option(
            "--evidence",
            help="Verify each recipient's signed acknowledgement and save it in this folder "
            "(<mid>.<recipient>.ack.jws; give your --receipts folder to keep it beside the receipt)",
        ),
    ] = None,
    receipts: Annotated[
        Path,
        typer.Option(help="Folder where `broker send` kept the receipt (what we sent)"),
    ] = Path("sent"),
    log_key: Annotated[
        str | None,
        typer.Option(
            "--log-key",
            envvar="BROKER_LOG_KEY",
            help="The log's verifier key <origin>+<key id>+<base64>, pinned out of band: "
            "check the acknowledging key at the time the log recorded it",
        ),
    ] = None,
    as_json: AS_JSON = None,
) -> None:
    """Delivery and acknowledgement of a message you sent, per recipient.

    With --evidence, each acknowledgement is verified and kept; the command ends with status 1
    when one that the broker shows does not verify.
    """
    from broker.cli import output

    sent = _sent_envelope_sha256(receipts, mid) if evidence is not None else ""
    with _client(url, token) as client:
        state = client.status(mid)
        checked = _ack_evidence(client, state, evidence, sent, log_key, mid)

    def render() -> None:
        output.fields(
            [
                ("mid", state.get("mid")),
                ("kind", state.get("kind")),
                ("from", state.get("sender_fp")),
                ("agreement", state.get("agreement")),
                ("operation", state.get("operation")),
                ("offence", state.get("offence")),
                ("received", output.iso(state.get("received_at"))),
                ("log index", state.get("log_index")),
            ]
        )
        typer.echo("")
        output.table(
            [
                d
                | {k: output.iso(d.get(k)) for k in ("available_at", "fetched_at", "acked_at")}
                | {"ack": " ".join(filter(None, [d.get("ack_status"), d.get("ack_reason")]))}
                for d in state.get("deliveries", [])
            ],
            [
                ("recipient", "recipient"),
                ("state", "state"),
                ("available_at", "available"),
                ("fetched_at", "fetched"),
                ("acked_at", "acknowledged"),
                ("ack", "ack"),
                ("overdue", "overdue"),
                ("feedback", "feedback"),
            ],
        )
        if state.get("recall"):
            typer.echo("")
            _recall_status(state["recall"])
        if checked is not None:
            typer.echo("")
            for line in _evidence_lines(checked):
                typer.echo(line)

    if checked is None:
        output.emit(state, as_json, render)
        return
    output.emit(state | {"evidence": [e.as_dict() for e in checked]}, as_json, render)
    if any(e.ack is not None and not e.verified for e in checked):
        raise typer.Exit(1)


def _sent_envelope_sha256(receipts: Path, mid: str) -> str:
    """Our own record of the envelope we sent: the hash our verified receipt holds."""
    kept = receipts / f"{Path(mid).name}.json"
    if not kept.is_file():
        fail(
            f"--receipts: no receipt {kept} for {mid}: pass the folder `broker send --receipts` "
            "kept it in (--evidence checks the acknowledgements against what you sent)",
            USAGE,
        )
    try:
        digest = json.loads(kept.read_text(encoding="utf-8"))["envelope_sha256"]
    except (ValueError, KeyError, TypeError):
        digest = None
    if not isinstance(digest, str):
        fail(f"--receipts: {kept} is not a receipt `broker send` kept: restore it", USAGE)
    return digest


def _ack_evidence(
    client: Any,
    state: dict[str, Any],
    folder: Path | None,
    sent: str,
    log_key: str | None,
    mid: str,
) -> list[Any] | None:
    """Verify and keep each acknowledgement (`--evidence`); None without the option."""
    if folder is None:
        return None
    from broker.sdk import evidence

    checked = evidence.ack_evidence(client, state, envelope_sha256=sent, log_key=log_key)
    folder.mkdir(parents=True, exist_ok=True)
    for e in checked:
        if e.ack is not None:
            (folder / f"{Path(mid).name}.{Path(e.recipient).name}.ack.jws").write_text(e.ack)
    return checked


def _evidence_lines(checked: list[Any]) -> list[str]:
    """One line per recipient: verified (and against which time), or why not."""
    from broker.cli import output

    lines = []
    for e in checked:
        if e.ack is None:
            lines.append(f"{e.recipient}: no acknowledgement yet")
        elif not e.verified:
            lines.append(f"{e.recipient}: NOT verified: {e.problem}")
        else:
            when = output.iso(e.checked_at)
            where = (
                f"the log's time {when} (leaf {e.log_index})"
                if e.time_source == "log"
                else f"the broker's recorded time {when}, not proven by the log"
            )
            status = " ".join(filter(None, [e.status, e.reason]))
            lines.append(f"{e.recipient}: verified {status}: key {e.kid} valid at {where}")
        lines += [f"  note: {n}" for n in e.notes]
    return lines


# Which option set each member of a recall statement (`broker recall`).
_RECALL_OPTIONS = {
    "mid": "MID",
    "sender": "--from",
    "sender_fp": "--from",
    "reason": "--reason",
    "legal_reference": "--legal-reference",
}


@_api_errors
def recall(
    mid: Annotated[str, typer.Argument(help="The message id `broker send` printed")],
    fp: Annotated[str, typer.Option("--from", help="Your focal point id, e.g. VN-GDC/fp-hcm-01")],
    reason: Annotated[
        vocab.RecallReason,
        typer.Option(help="Why: legal_order and erasure_request need --legal-reference"),
    ],
    legal_reference: Annotated[
        str | None,
        typer.Option(help="The originator's order or request number, e.g. HCMC-PC-2026/0917"),
    ] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
    kid: KID = None,
    as_json: AS_JSON = None,
) -> None:
    """Recall a message you sent: copies not yet fetched are withdrawn, and the recipients that
    hold one are sent your signed statement, to erase it and answer by the deadline.

    `broker status MID` shows each recipient's outcome and answer. See
    docs/data-lifecycle.md, "Recall".
    """
    from broker import schemas
    from broker.sdk import agent

    _need_token(token)
    if reason in vocab.RECALL_NEEDS_REFERENCE and not legal_reference:
        fail(f"--reason {reason} needs --legal-reference: the order or request number", USAGE)
    try:  # every mistake in the statement is told before the broker is asked
        agent.recall_statement(fp, mid=mid, reason=reason, legal_reference=legal_reference)
    except schemas.SchemaError as exc:
        fail(_recall_fields(exc, {"mid": mid, "fp": fp, "legal_reference": legal_reference}), USAGE)
    store = _keystore(keystore)
    with _client(url, token) as client:
        signer = store.with_directory(client).signing_key(fp, kid)
        answer = agent.recall(
            client, signer, sender_fp=fp, mid=mid, reason=reason, legal_reference=legal_reference
        )
    _report_recall(answer, signer.kid, as_json)


def _recall_fields(exc: Any, values: dict[str, Any]) -> str:
    """The statement's invalid members in one line, each named by the option that set it."""
    parts = []
    for e in exc.errors[:8]:
        member = e.pointer.split("/")[1] if e.pointer.count("/") else ""
        option = _RECALL_OPTIONS.get(member)
        value = str(values.get("fp" if option == "--from" else member))
        value = value if value.isprintable() else json.dumps(value)  # a line break stays shown
        if option is None:
            parts.append(f"the recall {e.pointer or '/'}: {e.message}")
        elif option == "MID":
            parts.append(f"MID {value}: is not a message id (the UUID `broker send` printed)")
        elif option == "--from":
            parts.append(f"--from {value}: is not {_SHAPES['--from']}")
        elif option == "--legal-reference":
            parts.append(
                f"--legal-reference {value}: give the order or request number: 2 to 120 "
                "letters, digits, spaces and / . _ -, starting and ending with a letter or digit"
            )
        else:
            parts.append(f"{option} {value}: {e.message}")
    return "; ".join(dict.fromkeys(parts))  # --from sets two members: said once


def _report_recall(answer: dict[str, Any], kid: str, as_json: bool | None) -> None:
    from broker.cli import output

    output.emit(
        answer | {"kid": kid},
        as_json,
        lambda: output.fields(
            [
                ("mid", answer["mid"]),
                ("recall", answer["rid"]),
                ("reason", _recall_reason(answer)),
                ("recalled at", output.iso(answer["recalled_at"])),
                ("answers due", output.iso(answer["deadline_at"])),
                ("withdrawn", _recipients(answer, "withdrawn")),
                ("notified", _recipients(answer, "notified")),
                ("signing key", kid),
            ]
        ),
    )


def _recipients(recall: dict[str, Any], outcome: str) -> list[str]:
    return [r["recipient"] for r in recall.get("recipients", []) if r["outcome"] == outcome]


def _recall_reason(recall: dict[str, Any]) -> str:
    ref = recall.get("legal_reference")
    return str(recall["reason"]) + (f" ({ref})" if ref else "")


def _recall_answer(r: dict[str, Any]) -> str:
    """One recipient's part in a recall: withdrawn, erased, retained (ground), overdue, awaited."""
    if r.get("outcome") == "withdrawn":
        return "withdrawn (never fetched)"
    if r.get("compliance") == "retained":
        return f"retained ({r.get('legal_ground')})"
    if r.get("compliance") == "erased":
        return "erased"
    return "overdue: no answer" if r.get("overdue") else "notified, answer awaited"


def _recall_status(recall: dict[str, Any]) -> None:
    """`broker status`: the message's recall and each recipient's answer."""
    from broker.cli import output

    output.fields(
        [
            ("recalled", _recall_reason(recall)),
            ("recalled at", output.iso(recall.get("recalled_at"))),
            ("answers due", output.iso(recall.get("deadline_at"))),
        ]
    )
    typer.echo("")
    output.table(
        [
            r | {"answer": _recall_answer(r), "complied_at": output.iso(r.get("complied_at"))}
            for r in recall.get("recipients", [])
        ],
        [("recipient", "recipient"), ("answer", "recall"), ("complied_at", "answered")],
    )


PULLED = [
    ("seq", "seq"),
    ("mid", "mid"),
    ("sender", "sender"),
    ("status", "status"),
    ("reason", "reason"),
]


@inbox_app.command("pull")
@_api_errors
def inbox_pull(
    agency: Annotated[str, typer.Option(help="Your agency id, e.g. HK-CED")],
    state: Annotated[Path, typer.Option(help="Folder for the cursor and the evidence")] = Path(
        "inbox"
    ),
    wait: Annotated[
        float,
        typer.Option(
            min=0, max=30, help="Long-poll seconds when the inbox is empty (--follow: 20)"
        ),
    ] = 0,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Keep long-polling, printing each item as it is settled, retrying when the "
            "broker is unreachable or busy; Ctrl-C stops after the item in hand",
        ),
    ] = False,
    max_items: Annotated[
        int | None, typer.Option(min=1, help="--follow: stop after this many items")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--for", min=0, help="--follow: stop after these seconds")
    ] = None,
    ack_key: Annotated[
        str | None, typer.Option(help="Owner of the signing key for acks (default: the agency)")
    ] = None,
    log_key: Annotated[
        str | None,
        typer.Option(
            "--log-key",
            envvar="BROKER_LOG_KEY",
            help="The broker's log key <origin>+<key id>+<base64>, pinned from the agreement "
            "annex (default: the broker's own, trusted on first use and kept in --state)",
        ),
    ] = None,
    url: URL = "http://127.0.0.1:8000",
    token: TOKEN = "",
    keystore: KEYSTORE = Path("keys"),
    as_json: AS_JSON = None,
) -> None:
    """Follow the cursor: check the log, open and verify every envelope, keep the evidence,
    acknowledge."""
    _need_token(token)
    from broker.audit.verify import VerifyError, parse_key
    from broker.cli import output
    from broker.sdk.agent import InboxPuller, Pulled
    from broker.sdk.logcheck import LogStateError

    if (max_items is not None or duration is not None) and not follow:
        fail("--max-items and --for bound --follow: add --follow, or leave them out", USAGE)
    if log_key is not None:
        try:
            parse_key(log_key)
        except VerifyError as exc:
            fail(f"--log-key: {exc}: give the key as published, <origin>+<key id>+<base64>", USAGE)

    def row(r: Pulled) -> dict[str, Any]:
        return {
            "seq": r.seq,
            "mid": r.mid,
            "sender": r.sender,
            "status": r.status,
            "reason": r.reason,
            **({"detail": r.detail} if r.detail else {}),  # why it was rejected
            **({"recalls": r.recalls} if r.recalls else {}),  # a recall notice: what it erased
        }

    with _client(url, token) as client, _progress() as bar:
        task = bar.add_task("pulling", total=None)
        store = _keystore(keystore).with_directory(client)  # acks signed with an active key
        _check_agency(client, store, agency)
        puller = InboxPuller(client, store, agency, state, ack_owner=ack_key, log_key=log_key)
        try:
            if follow:
                summary = _follow(puller, bar, task, wait or 20, max_items, duration, as_json)
            else:
                results = puller.pull(
                    wait=wait,
                    on_item=lambda r: bar.update(task, description=f"{r.seq}: {r.status}"),
                )
        except LogStateError as exc:
            fail(f"--log-key/--state: {exc}", USAGE)
    if follow:
        typer.echo(summary, err=True)  # once the spinner line is gone
        return
    rows = [row(r) for r in results]
    columns = [*PULLED, ("recalls", "recalls")] if any(r.recalls for r in results) else PULLED
    output.emit(rows, as_json, lambda: output.table(rows, columns))


def _progress() -> Any:
    """A spinner line on the terminal: above it, what stdout prints; piped, on stderr only."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    piped = not sys.stdout.isatty()
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        transient=True,
        console=Console(stderr=True) if piped else None,
        redirect_stdout=not piped,
        redirect_stderr=not piped,
    )


def _follow(
    puller: Any,
    bar: Any,
    task: Any,
    wait: float,
    max_items: int | None,
    duration: float | None,
    as_json: bool | None,
) -> str:
    """`inbox pull --follow`: one line per item (JSON lines when piped), until stopped; returns
    the closing line for stderr."""
    import signal
    import threading

    from broker.cli import output

    stream_json = output.wants_json(as_json)
    widths = (6, 36, 10, 10, 0)  # fixed: the lines are printed as the items come

    def say(text: str) -> None:
        if sys.stdout.isatty():  # above the spinner line, which shares the terminal
            bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(text)

    if not stream_json:
        say("  ".join(h.ljust(w) for (_, h), w in zip(PULLED, widths, strict=True)).rstrip())

    def show(r: Any) -> None:
        if stream_json:
            item = {"seq": r.seq, "mid": r.mid, "sender": r.sender, "status": r.status}
            item |= {"reason": r.reason, **({"detail": r.detail} if r.detail else {})}
            item |= {"recalls": r.recalls} if r.recalls else {}
            say(json.dumps(item, separators=(",", ":")))
        else:
            cells = (str(r.seq), r.mid, r.sender, r.status, r.reason or "")
            say("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        bar.update(task, description=f"{r.seq}: {r.status}")

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt  # as Ctrl-C: a supervisor's SIGTERM stops as cleanly

    settled = 0

    def counted(r: Any) -> None:
        nonlocal settled
        settled += 1
        show(r)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        puller.follow(
            wait=wait,
            max_items=max_items,
            duration_s=duration,
            on_item=counted,
            on_event=lambda text: bar.update(task, description=text),
        )
        why = "done"
    except KeyboardInterrupt:
        why = "stopped"
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return (
        f"{why}: {settled} item(s) settled; cursor {puller.cursor() or '(none)'} saved in "
        f"{puller.cursor_file}"
    )


@inbox_app.command("show")
def inbox_show(
    mid: Annotated[str | None, typer.Argument(help="One alert's mid; all when omitted")] = None,
    state: Annotated[Path, typer.Option(help="Folder given to `inbox pull`")] = Path("inbox"),
    as_json: AS_JSON = None,
) -> None:
    """Alerts pulled so far, with their verification result (and the decrypted content)."""
    from broker.cli import output
    from broker.sdk.agent import stored_alerts

    entries = [e for e in stored_alerts(state) if mid is None or e["mid"] == mid]
    if mid is not None and not entries:
        fail(f"no alert {mid} in {state}: pull it with `broker inbox pull`, or pass --state")
    if mid is None:
        entries = [
            {k: v for k, v in e.items() if k != "alert"}
            | {"title": e.get("alert", {}).get("body", {}).get("title")}
            for e in entries
        ]
        columns = [*PULLED, ("title", "title")]
        output.emit(entries, as_json, lambda: output.table(entries, columns))
        return

    def one() -> None:
        for e in entries:
            r = e.get("alert", {}).get("routing", {})
            output.fields(
                [
                    ("mid", e["mid"]),
                    ("kind", r.get("kind")),
                    ("from", r.get("sender_fp") or e["sender"]),
                    ("to", r.get("recipients")),
                    ("agreement", r.get("agreement")),
                    ("operation", r.get("operation")),
                    ("offence", r.get("offence")),
                    ("subject types", r.get("subject_types")),
                    ("priority", r.get("priority")),
                    ("handling", r.get("handling")),
                    ("in reply to", r.get("in_reply_to")),
                    ("outcome", r.get("outcome")),
                    ("supersedes", r.get("supersedes")),
                    ("superseded by", e.get("superseded_by")),
                    ("sent", output.iso(r.get("iat"))),
                    ("status", e.get("status")),
                    ("reason", e.get("reason")),
                    ("recalled", _recall_reason(e["recall"]) if "recall" in e else None),
                    ("erased at", output.iso(e.get("recall", {}).get("erased_at"))),
                ]
            )
            if "alert" in e:
                typer.echo("body:")
                body = json.dumps(e["alert"]["body"], indent=2, ensure_ascii=False)
                typer.echo("\n".join("  " + line for line in body.splitlines()))

    output.emit(entries, as_json, one)
