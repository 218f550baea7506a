"""`broker demo`: the world of ARCHITECTURE.md section 2 on the embedded default, over HTTP.

The broker serves in a background thread (uvicorn, on its own event loop); the scenario talks
to it as the agencies would, through the SDK and real HTTP. Only the first admin token is made
directly, through the services (`db.call`).

The output is a progress display that fits 80 columns: a line as each step completes, with the
seconds since the command started. The libraries are imported inside the functions, so that
the command can say it is starting before it imports them, and `broker demo env` (which only
reads `demo-credentials.json`) imports none of them.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import shlex
import threading
import time
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2
    from rich.console import Console
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.sdk.keystore import Keystore

WIDTH = 80  # no line of the demo's output is wider
ADMIN = "demo-admin"
CREDENTIALS = "demo-credentials.json"
# Who the demo gives a token to: name -> principal document.
DEMO_PRINCIPALS: list[dict[str, Any]] = [
    {"name": "vn-gdc-hcm", "role": "focal_point", "focal_point_id": "VN-GDC/fp-hcm-01"},
    {"name": "hk-ced-fp", "role": "focal_point", "focal_point_id": "HK-CED/fp-01"},
    {"name": "kr-kcs-fp", "role": "focal_point", "focal_point_id": "KR-KCS/fp-01"},
    {"name": "nz-pol-fp", "role": "focal_point", "focal_point_id": "NZ-POL/fp-01"},
    {"name": "vn-mps-fp", "role": "focal_point", "focal_point_id": "VN-MPS/fp-01"},
    {"name": "vn-spp-fp", "role": "focal_point", "focal_point_id": "VN-SPP/fp-01"},
    {"name": "mz-pgr-fp", "role": "focal_point", "focal_point_id": "MZ-PGR/fp-01"},
    {"name": "rilo-fp", "role": "focal_point", "focal_point_id": "INT-WCO-RILOAP/fp-analyst-01"},
    {"name": "vn-gdc-inbox", "role": "agency", "agency_id": "VN-GDC"},
    {"name": "hk-ced-inbox", "role": "agency", "agency_id": "HK-CED"},
    {"name": "kr-kcs-inbox", "role": "agency", "agency_id": "KR-KCS"},
    {"name": "cn-gacc-inbox", "role": "agency", "agency_id": "CN-GACC"},
    {"name": "vn-mps-inbox", "role": "agency", "agency_id": "VN-MPS"},
    {"name": "nz-pol-inbox", "role": "agency", "agency_id": "NZ-POL"},
    {"name": "vn-spp-inbox", "role": "agency", "agency_id": "VN-SPP"},
    {"name": "mz-pgr-inbox", "role": "agency", "agency_id": "MZ-PGR"},
    {"name": "rilo-inbox", "role": "agency", "agency_id": "INT-WCO-RILOAP"},
    # Each agency's own administrator (docs/registrars.md): the guides register keys with it.
    {"name": "vn-gdc-registrar", "role": "registrar", "agency_id": "VN-GDC"},
    {"name": "hk-ced-registrar", "role": "registrar", "agency_id": "HK-CED"},
    {"name": "kr-kcs-registrar", "role": "registrar", "agency_id": "KR-KCS"},
    {"name": "oversight-auditor", "role": "auditor"},
]
# `broker demo env --as ROLE`: whose credentials, and the variables that role's guide reads
# (REGISTRAR_TOKEN: the token of the agency's registrar, which the guides' first step
# registers keys with).
_AGENCY_SIDE = (
    "BROKER_URL",
    "BROKER_TOKEN",
    "BROKER_KEYSTORE",
    "BROKER_KEY_PASSPHRASE",
    "REGISTRAR_TOKEN",
)
GUIDE_ROLES: dict[str, tuple[str, tuple[str, ...], str]] = {
    # The inbox and `status --evidence` check the log with the broker's log key, as pinned
    # from the agreement annex.
    "focal_point": ("vn-gdc-hcm", (*_AGENCY_SIDE, "BROKER_LOG_KEY"), "docs/focal-points.md"),
    "agency": ("hk-ced-inbox", (*_AGENCY_SIDE, "BROKER_LOG_KEY"), "docs/partners.md"),
    "auditor": (
        "oversight-auditor",
        ("BROKER_URL", "BROKER_TOKEN", "BROKER_LOG_KEY"),
        "docs/auditors.md",
    ),
    "registrar": ("vn-gdc-registrar", _AGENCY_SIDE, "docs/registrars.md"),
    "admin": (ADMIN, ("BROKER_URL", "BROKER_TOKEN"), "docs/operators.md"),
}


@functools.cache
def console() -> Console:
    """The demo's output: at most WIDTH columns, narrower on a narrower terminal."""
    from rich.console import Console

    out = Console(highlight=False)
    out.width = min(out.width, WIDTH)
    return out


class Progress:
    """A line as each step completes, with the seconds since `started` (the command's start)."""

    def __init__(self, started: float) -> None:
        self.started = started

    def done(self, what: str) -> None:
        _ok(f"{what} ({time.monotonic() - self.started:.1f} s)")

    def running(self, what: str) -> Any:
        """On a terminal, a spinner naming the step under way (elsewhere nothing)."""
        out = console()
        return out.status(what) if out.is_terminal else nullcontext()


class NotServing(RuntimeError):
    """The background server did not start (its port is taken, most likely)."""


class ServerThread(threading.Thread):
    """uvicorn in a background thread, so the scenario can talk to it over real HTTP."""

    def __init__(self, port: int) -> None:
        import uvicorn

        from broker import serving
        from broker.config import settings

        super().__init__(daemon=True)
        # Bound now, so that a port in use is told before anything runs (broker/serving.py).
        try:
            self.socket = serving.listen(settings().host, port)
        except serving.CannotListen as exc:
            raise NotServing(exc.problem) from None
        config = uvicorn.Config(
            "broker.main:create_app",
            factory=True,
            host=settings().host,
            port=self.socket.getsockname()[1],
            log_config=None,
            access_log=False,
            **settings().uvicorn_proxy,  # type: ignore[arg-type]
        )
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        self.server.run(sockets=[self.socket])

    def wait_started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.is_alive() or time.monotonic() > deadline:
                raise NotServing(
                    f"the server did not start on port {self.server.config.port} (in use?)"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(timeout=10)
        self.socket.close()


async def _admin_token(session: AsyncSession) -> str:
    from broker.auth import repository as auth_repo
    from broker.auth import service as auth
    from broker.auth.service import Role

    principal = await auth_repo.principal_by_name(session, ADMIN)
    if principal is None:
        principal = await auth.create_principal(session, name=ADMIN, role=Role.admin, actor="demo")
    _, secret = await auth.issue_token(session, principal, actor="demo", ttl_days=30)
    return secret


def _bootstrap_admin() -> str:
    """The one principal created directly: everything else goes through the API."""
    from broker import db

    return db.call(_admin_token)


def _check(response: httpx2.Response) -> Any:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.text}"
        )
    return response.json() if response.content else None


def _tokens(api: httpx2.Client) -> dict[str, dict[str, Any]]:
    existing = {p["name"] for p in _check(api.get("/v1/admin/principals"))}
    tokens: dict[str, dict[str, Any]] = {}
    for doc in DEMO_PRINCIPALS:
        if doc["name"] in existing:
            issued = _check(api.post(f"/v1/admin/principals/{doc['name']}/tokens", json={}))
        else:
            issued = _check(api.post("/v1/admin/principals", json=doc))
        binding = {k: v for k, v in doc.items() if k not in ("name",)}
        tokens[doc["name"]] = {**binding, "token": issued["token"]}
    return tokens


def _table(title: str, *columns: str, flexible: dict[str, int]) -> Any:
    """A table as wide as the console: the other columns as wide as their values, the
    `flexible` ones sharing the rest in the given ratios (their values wrapped)."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), expand=True
    )
    for name in columns:
        if name in flexible:
            table.add_column(name, ratio=flexible[name], overflow="fold")
        else:
            table.add_column(name, no_wrap=True)
    return table


def _loaded(loaded: dict[str, dict[str, int]]) -> str:
    """`POST /v1/admin/world`'s answer in words: how many of each, and whether all were there."""
    kinds = {**loaded["skipped"], **loaded["created"]}
    counts = ", ".join(
        f"{loaded['created'].get(k, 0) + loaded['skipped'].get(k, 0)} {k.replace('_', ' ')}"
        for k in kinds
    )
    return counts + ("" if loaded["created"] else " (already there)")


def _show_world(api: httpx2.Client) -> None:
    """The world as the broker now holds it, one table per kind."""
    out = console()
    agencies = _check(api.get("/v1/admin/agencies"))
    table = _table(
        f"Agencies ({len(agencies)})", "id", "country", "kind", "name", flexible={"name": 1}
    )
    # One line per agency: a long name is cut short (…) rather than wrapped.
    table.columns[-1].no_wrap = True
    table.columns[-1].overflow = "ellipsis"
    for a in agencies:
        table.add_row(a["id"], a["country"], a["kind"], a["name"])
    out.print(table)
    agreements = _check(api.get("/v1/admin/agreements"))
    table = _table(
        f"Agreements ({len(agreements)})",
        *("id", "parties", "offences", "exclusions"),
        flexible={"offences": 3, "exclusions": 2},
    )
    for ag in agreements:
        doc = ag["document"]
        parties = doc["parties"]
        shown = ", ".join(parties) if len(parties) <= 2 else f"{len(parties)} agencies"
        excl = "; ".join(
            f"{e['from']}→{e['to']}: no {', '.join(e['offences'])}" for e in doc["exclusions"]
        )
        table.add_row(ag["id"], shown, ", ".join(doc["offences"]), excl or "-")
    out.print(table)
    operations = _check(api.get("/v1/admin/operations"))
    table = _table(
        f"Operations ({len(operations)})",
        *("id", "agreement", "window", "members"),
        flexible={"members": 1},
    )
    for op in operations:
        members = op["document"]["members"]
        table.add_row(
            op["id"],
            op["agreement_id"],
            f"{op['starts_at'][:10]} → {op['ends_at'][:10]}",
            ", ".join(members) if len(members) <= 2 else f"{len(members)} agencies",
        )
    out.print(table)


# Every member of MEKONG-DRAGON-V gets an encryption key, so that an alert can be addressed to
# all of them; the demo opens it at RILO A/P.
MEKONG_MEMBERS = (
    "AU-ABF", "BD-NBR", "BN-RCED", "CN-GACC", "FJ-FRCS", "HK-CED", "ID-DGCE", "IN-CBIC",
    "INT-WCO-RILOAP", "JP-JC", "KH-GDCE", "KR-KCS", "LA-LCD", "LK-SLC", "MM-MCD", "MN-CA",
    "MO-SA", "MY-RMCD", "NP-DC", "NZ-CUS", "PG-CS", "PH-BOC", "PK-FBR", "SG-SC", "TH-CUS",
    "TL-AT", "VN-GDC",
)  # fmt: skip
DEMO_KEYS = {
    "sig": [
        "VN-GDC/fp-hcm-01",
        "HK-CED/fp-01",
        "KR-KCS/fp-01",
        "NZ-POL/fp-01",
        "VN-SPP/fp-01",
        "MZ-PGR/fp-01",
        "INT-WCO-RILOAP/fp-analyst-01",
        "HK-CED",
        "KR-KCS",
        "CN-GACC",
        "VN-GDC",
        "VN-SPP",
        "MZ-PGR",
        "INT-WCO-RILOAP",
    ],
    "enc": [*MEKONG_MEMBERS, "VN-MPS", "NZ-POL", "VN-SPP", "MZ-PGR"],
}


def _keystore(api: httpx2.Client, folder: Path) -> tuple[Keystore, str, int]:
    """Generate and register the demo's private keys (agency side), reusing them on re-runs.

    Returns the keystore, its passphrase and how many keys were registered now.
    """
    from broker.crypto import keys as crypto_keys
    from broker.sdk.keystore import Keystore

    passphrase_file = folder.parent / "demo-keystore.passphrase"
    if passphrase_file.exists():
        passphrase = passphrase_file.read_text().strip()
    else:
        passphrase = crypto_keys.generate_passphrase()
        folder.parent.mkdir(parents=True, exist_ok=True)
        passphrase_file.write_text(passphrase)
        os.chmod(passphrase_file, 0o600)
    store = Keystore.open(folder, passphrase)
    registered = {k["kid"] for k in _check(api.get("/v1/directory/jwks"))["keys"]}
    added = 0
    for use, owners in DEMO_KEYS.items():
        for owner in owners:
            stem = owner.replace("/", "__")
            if not list(folder.glob(f"{stem}-{use}-*.p8.pem")):
                store.generate(owner, use)
            key = store.signing_key(owner) if use == "sig" else store.encryption_keys(owner)[-1]
            if key.kid not in registered:
                agency = owner.split("/")[0]
                body = {
                    "agency_id": agency,
                    "focal_point_id": owner if "/" in owner else None,
                    "jwk": key.public.jwk,
                }
                _check(api.post("/v1/admin/keys", json=body))
                added += 1
    return store, passphrase, added


def _say(mark: str, style: str, text: str, detail: str = "", *, bold: str = "") -> None:
    """`mark text: detail`, wrapped under the text (not under the mark) to fit the width; the
    detail starts its own line when it would not fit beside the text. `bold`: a part of the
    detail to show in bold. Plain text, never markup: the values come from the broker."""
    import textwrap

    from rich.text import Text

    out = console()
    room = out.width - 2
    lines = textwrap.wrap(text + (":" if detail else ""), room) or [""]
    if detail and "\n" not in detail and len(lines[-1]) + 1 + len(detail) <= room:
        lines[-1] += " " + detail
    elif detail:
        for paragraph in detail.splitlines():
            lines += textwrap.wrap(paragraph, room, break_on_hyphens=False)
    body = Text("\n".join(f"  {line}" if i else line for i, line in enumerate(lines)))
    if bold:
        body.highlight_words([bold], style="bold")
    out.print(Text.assemble((mark, style), " ", body))


def _ok(step: str, detail: str = "") -> None:
    _say("✔", "green", step, detail)


def _refused(step: str, code: str, detail: str = "") -> None:
    _say("✘", "red", step, f"refused: {code}{detail}", bold=code)


def _scenario(
    base_url: str,
    tokens: dict[str, dict[str, Any]],
    store: Keystore,
    data_dir: Path,
    transport: httpx2.HTTPTransport,
    log_key: str,
    admin: httpx2.Client,
    passphrase: str,
) -> dict[str, Any]:
    """The exchanges of ARCHITECTURE.md section 2, through the SDK and the HTTP API.

    Every client shares `transport` (one pool, one TLS context) and keeps its own token.
    """
    import httpx2

    from broker.sdk import agent
    from broker.sdk.client import BrokerAPIError, BrokerClient

    outcomes: dict[str, Any] = {"refusals": {}}
    body = json.loads(
        resources.files("broker.fixtures").joinpath("bodies/ivory-shipment.json").read_text()
    )
    client = {
        name: BrokerClient(base_url, t["token"], transport=transport) for name, t in tokens.items()
    }
    console().rule("1. A shipment alert, VN-GDC to HK-CED under VN-HK-CMAA-2013")

    def shipment_alert(**options: Any) -> Any:
        """VN-GDC's focal point's shipment alert to HK-CED under VN-HK-CMAA-2013."""
        return agent.compose(
            client["vn-gdc-hcm"],
            store.signing_key("VN-GDC/fp-hcm-01"),
            sender_fp="VN-GDC/fp-hcm-01",
            recipients=["HK-CED"],
            agreement="VN-HK-CMAA-2013",
            offence="cites_wildlife",
            body=body,
            **options,
        )

    draft = shipment_alert(priority="urgent")
    answer = agent.send(client["vn-gdc-hcm"], draft)
    _ok("VN-GDC/fp-hcm-01 sent a signed, encrypted alert", f"receipt verified, mid {draft.mid}")
    outcomes["accepted"] = draft.mid
    pulled = agent.InboxPuller(
        client["hk-ced-inbox"], store, "HK-CED", data_dir / "inbox-HK-CED", log_key=log_key
    ).pull(wait=10)
    mine = [p for p in pulled if p.mid == draft.mid]
    _ok(
        "HK-CED pulled its inbox",
        f"{mine[0].status}: signature verified, content decrypted, acknowledged",
    )
    state = client["vn-gdc-hcm"].status(draft.mid)["deliveries"][0]
    _ok(
        "VN-GDC sees the delivery", f"{state['recipient']} {state['state']} ({state['ack_status']})"
    )
    outcomes["delivered"] = state["state"]
    outcomes["acks"] = _acks_back(client["vn-gdc-hcm"], draft, answer, log_key)

    console().rule("2. A Mekong Dragon alert to three members, and seizure feedback")
    members = ["CN-GACC", "HK-CED", "KR-KCS"]
    mekong = dict(body, title="Ivory consignment moving through the Mekong corridor")
    multi = agent.compose(
        client["vn-gdc-hcm"],
        store.signing_key("VN-GDC/fp-hcm-01"),
        sender_fp="VN-GDC/fp-hcm-01",
        recipients=members,
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="cites_wildlife",
        body=mekong,
    )
    sent = agent.send(client["vn-gdc-hcm"], multi)
    _ok("VN-GDC alerted " + ", ".join(members), f"mid {multi.mid}")
    for agency in members:
        name = f"{agency.lower()}-inbox"
        results = agent.InboxPuller(
            client[name], store, agency, data_dir / f"inbox-{agency}", log_key=log_key
        ).pull(wait=10)
        _ok(f"{agency} opened it", ", ".join(sorted({r.status for r in results})))
    _acks_back(client["vn-gdc-hcm"], multi, sent, log_key)
    # What each member seized, in kg: the narrative and details go encrypted in the body, the
    # outcome, commodity and weight band in the signed routing that the results count.
    seizures = [
        ("hk-ced-fp", "HK-CED/fp-01", "HKHKG", "2026-11-22", 212, "Loxodonta africana",
         "Container CSQU3054383 opened at Kwai Chung: 212 kg of tusks under frozen fish."),
        ("kr-kcs-fp", "KR-KCS/fp-01", "KRPUS", "2026-11-24", 64, "Manis javanica",
         "Pangolin scales in a reefer at Busan New Port, declared as frozen squid."),
    ]  # fmt: skip
    for who, fp, locode, day, kg, species, narrative in seizures:
        seized = {"value": kg, "unit": "kg"}
        feedback = agent.compose(
            client[who],
            store.signing_key(fp),
            sender_fp=fp,
            recipients=["VN-GDC"],
            agreement="MEKONG-DRAGON",
            operation="MEKONG-DRAGON-V",
            offence="cites_wildlife",
            body={
                "narrative": narrative,
                "language": "en",
                "references": [multi.mid],
                "seizures": [
                    {
                        "type": "seizure",
                        "date": day,
                        "place": {"locode": locode},
                        "commodity": "wildlife",
                        "quantity": seized,
                        "species": species,
                        "cites_appendix": "I",
                    }
                ],
            },
            subject_types=["seizure"],
            kind="feedback",
            extra={
                "in_reply_to": multi.mid,
                "outcome": "seized",
                "commodity": "wildlife",
                "quantity_band": agent.quantity_band(seized),
            },
        )
        agent.send(client[who], feedback)
        band = str(feedback.routing["quantity_band"]).removesuffix("kg").replace("_", "-")
        _ok(
            f"{fp.split('/')[0]} reported a seizure back to VN-GDC",
            f"outcome seized, {band} kg (signed routing, content encrypted)",
        )
        outcomes.setdefault("feedback", feedback.mid)
    outcomes["results"] = _results(client["vn-gdc-hcm"])

    outcomes["group"] = _group_alert(client, store, data_dir, log_key, body)
    outcomes["prosecutors"] = _prosecutors(client, store, data_dir, log_key)

    console().rule("5. Attempts the broker refuses, each with its reason")
    nz = dict(
        body,
        title="Methamphetamine courier",
        subjects=[{"type": "person", "names": [{"latin": "Example Person"}], "roles": ["courier"]}],
    )
    attempts = [
        (
            "NZ-POL to VN-MPS about narcotics (death-penalty direction)",
            "nz-pol-fp",
            "NZ-POL/fp-01",
            {
                "recipients": ["VN-MPS"],
                "agreement": "VN-NZ-TNC-2019",
                "offence": "narcotics",
                "body": nz,
            },
        ),
        (
            "A Twin Guardian II alert after the operation's window",
            "vn-gdc-hcm",
            "VN-GDC/fp-hcm-01",
            {
                "recipients": ["KR-KCS"],
                "agreement": "VN-KR-CUSTOMS",
                "operation": "TWIN-GUARDIAN-II",
                "offence": "narcotics",
                "body": body,
            },
        ),
        (
            "RILO A/P originating an alert (it only receives under Mekong Dragon)",
            "rilo-fp",
            "INT-WCO-RILOAP/fp-analyst-01",
            {
                "recipients": ["VN-GDC"],
                "agreement": "MEKONG-DRAGON",
                "offence": "cites_wildlife",
                "body": body,
            },
        ),
        (
            "A Mekong Dragon alert to a non-member (NZ-POL)",
            "vn-gdc-hcm",
            "VN-GDC/fp-hcm-01",
            {
                "recipients": ["NZ-POL"],
                "agreement": "MEKONG-DRAGON",
                "offence": "narcotics",
                "body": body,
            },
        ),
    ]
    for label, who, fp, fields in attempts:
        try:
            check = client[who].check(agent.routing_for(fp, **fields))
            forced = agent.compose(
                client[who], store.signing_key(fp), sender_fp=fp, dry_run_first=False, **fields
            )
            agent.send(client[who], forced)
            _ok(label, "accepted (unexpected)")
        except BrokerAPIError as exc:
            said = check.get("code")
            _refused(
                label,
                exc.code,
                ", as the dry run had said before encrypting"
                if said == exc.code
                else f" (the dry run before encrypting said {said})",
            )
            outcomes["refusals"][label] = exc.code
    replay = shipment_alert(extra={"mid": draft.mid})
    try:
        agent.send(client["vn-gdc-hcm"], replay)
    except BrokerAPIError as exc:
        _refused("A replay: the first alert's mid with a different envelope", exc.code)
        outcomes["refusals"]["replay"] = exc.code
    same = client["vn-gdc-hcm"].submit(draft.envelope, draft.mid)
    _ok(
        "The first envelope submitted again",
        f"the original receipt ({same['event_id'] == answer['event_id'] and 'same event'})",
    )
    outcomes["governance"] = _governance(client, store, body)
    outcomes["recall"] = _recall(client, store, data_dir, log_key, body)
    outcomes["purged"] = _purge(client["vn-gdc-hcm"], draft.mid)
    console().rule("9. Partner agencies' witnesses cosign the log")
    witness_keys = _witnesses(admin, client, data_dir, log_key, passphrase)
    outcomes["witnesses"] = len(witness_keys)
    outcomes["audit"] = _audit(
        client["oversight-auditor"],
        base_url,
        tokens["oversight-auditor"]["token"],
        data_dir,
        httpx2.Client(base_url=base_url, timeout=60.0, transport=transport),
        witness_keys,
    )
    return outcomes  # the clients hold nothing but `transport`, which the caller closes


def _group_alert(
    client: dict[str, Any], store: Keystore, data_dir: Path, log_key: str, body: dict[str, Any]
) -> int:
    """An alert to every member of MEKONG-DRAGON-V, as the broker lists them now, opened by
    RILO A/P, which receives under Mekong Dragon but originates nothing."""
    from broker.sdk import agent

    console().rule("3. An alert to all members of MEKONG-DRAGON-V, opened at RILO A/P")
    urgent = dict(body, title="Tusk consignment re-routed: all Mekong Dragon ports, watch")
    draft = agent.compose(
        client["vn-gdc-hcm"],
        store.signing_key("VN-GDC/fp-hcm-01"),
        sender_fp="VN-GDC/fp-hcm-01",
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        audience=agent.MEMBERS,
        offence="cites_wildlife",
        priority="urgent",
        body=urgent,
    )
    agent.send(client["vn-gdc-hcm"], draft)
    members = draft.routing["recipients"]
    _ok(
        f"VN-GDC addressed the members of MEKONG-DRAGON-V ({len(members)})",
        "encrypted to each; the broker checked them against the membership",
    )
    pulled = agent.InboxPuller(
        client["rilo-inbox"], store, "INT-WCO-RILOAP", data_dir / "inbox-RILO", log_key=log_key
    ).pull(wait=10)
    (opened,) = [p for p in pulled if p.mid == draft.mid]
    _ok(
        "RILO A/P (INT-WCO-RILOAP) opened it",
        f"{opened.status}: signature verified, content decrypted, acknowledged",
    )
    return len(members)


def _prosecutors(client: dict[str, Any], store: Keystore, data_dir: Path, log_key: str) -> str:
    """VN-SPP and MZ-PGR under the wildlife prosecutors' MoU: a CITES shipment alert with its
    export permit, opened and acknowledged, and the seizure reported back."""
    from broker.sdk import agent

    console().rule("4. Wildlife prosecutors: VN-SPP to MZ-PGR under VN-MZ-WILDLIFE-2017")
    ivory = {"species": "Loxodonta africana", "appendix": "I"}
    permit = {"kind": "export_permit", "number": "MZ/2026/EXP-0417", "issuing_country": "MZ"}
    alert = {
        "title": "Ivory exported from Maputo on a permit that does not match the cargo",
        "summary": "A permit for worked wood accompanies a container whose scan shows tusks.",
        "language": "en",
        "subjects": [
            {
                "type": "shipment",
                "container_numbers": ["MSKU9070323"],
                "port_of_loading": "MZMPM",
                "port_of_discharge": "VNHPH",
                "cites": [{**ivory, "documents": [permit]}],
            }
        ],
    }
    draft = agent.compose(
        client["vn-spp-fp"],
        store.signing_key("VN-SPP/fp-01"),
        sender_fp="VN-SPP/fp-01",
        recipients=["MZ-PGR"],
        agreement="VN-MZ-WILDLIFE-2017",
        offence="cites_wildlife",
        body=alert,
    )
    agent.send(client["vn-spp-fp"], draft)
    _ok("VN-SPP/fp-01 sent a CITES shipment alert", f"export permit {permit['number']}")
    pulled = agent.InboxPuller(
        client["mz-pgr-inbox"], store, "MZ-PGR", data_dir / "inbox-MZ-PGR", log_key=log_key
    ).pull(wait=10)
    (opened,) = [p for p in pulled if p.mid == draft.mid]
    _ok("MZ-PGR opened it", f"{opened.status}: signature verified, acknowledged")
    seized = {"value": 96, "unit": "kg"}
    feedback = agent.compose(
        client["mz-pgr-fp"],
        store.signing_key("MZ-PGR/fp-01"),
        sender_fp="MZ-PGR/fp-01",
        recipients=["VN-SPP"],
        agreement="VN-MZ-WILDLIFE-2017",
        offence="cites_wildlife",
        kind="feedback",
        subject_types=["seizure"],
        body={
            "narrative": "Container held at Maputo port: 96 kg of tusks; the permit was forged.",
            "language": "en",
            "references": [draft.mid],
            "seizures": [
                {
                    "type": "seizure",
                    "date": "2026-11-28",
                    "place": {"locode": "MZMPM"},
                    "commodity": "wildlife",
                    "quantity": seized,
                    "species": ivory["species"],
                    "cites_appendix": ivory["appendix"],
                    "cites_documents": [permit],
                }
            ],
        },
        extra={
            "in_reply_to": draft.mid,
            "outcome": "seized",
            "commodity": "wildlife",
            "quantity_band": agent.quantity_band(seized),
        },
    )
    agent.send(client["mz-pgr-fp"], feedback)
    (delivery,) = client["vn-spp-fp"].status(draft.mid)["deliveries"]
    _ok(
        "MZ-PGR reported the seizure back to VN-SPP",
        f"VN-SPP's status: {delivery['state']}, feedback {len(delivery['feedback'])}",
    )
    return str(delivery["state"])


def _recall(
    client: dict[str, Any], store: Keystore, data_dir: Path, log_key: str, body: dict[str, Any]
) -> dict[str, str]:
    """A Mekong Dragon alert recalled as inaccurate: withdrawn unread from CN-GACC, erased by
    HK-CED, which had opened it, on the recall notice its inbox brought."""
    from broker.sdk import agent

    console().rule("7. A recall: withdrawn unread, or erased by the partner who read it")
    draft = agent.compose(
        client["vn-gdc-hcm"],
        store.signing_key("VN-GDC/fp-hcm-01"),
        sender_fp="VN-GDC/fp-hcm-01",
        recipients=["CN-GACC", "HK-CED"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="cites_wildlife",
        body=dict(body, title="Second ivory consignment, same route (later found inaccurate)"),
    )
    agent.send(client["vn-gdc-hcm"], draft)
    hk = agent.InboxPuller(
        client["hk-ced-inbox"], store, "HK-CED", data_dir / "inbox-HK-CED", log_key=log_key
    )
    _pull_until(hk, lambda p: p.mid == draft.mid)
    _ok("VN-GDC alerted CN-GACC and HK-CED; HK-CED opened it", f"mid {draft.mid}")
    agent.recall(
        client["vn-gdc-hcm"],
        store.signing_key("VN-GDC/fp-hcm-01"),
        sender_fp="VN-GDC/fp-hcm-01",
        mid=draft.mid,
        reason="inaccurate",
    )
    _ok("VN-GDC recalled it as inaccurate", "a recall+jws signed by VN-GDC/fp-hcm-01")
    _pull_until(hk, lambda p: p.status == "recalled")
    _ok("HK-CED's inbox brought the recall notice", "its copy erased, the erasure signed back")
    recall = client["vn-gdc-hcm"].status(draft.mid)["recall"]
    states = {r["recipient"]: r["compliance"] or r["outcome"] for r in recall["recipients"]}
    _ok(
        "VN-GDC's status of the recall",
        ", ".join(f"{who} {what}" for who, what in sorted(states.items())),
    )
    return states


def _governance(client: dict[str, Any], store: Keystore, body: dict[str, Any]) -> dict[str, Any]:
    """Each agency administers its own: VN-GDC's registrar proposes widening VN-KR-CUSTOMS, which
    takes effect only when KR-KCS's registrar approves too; then it suspends its own duty desk,
    whose next request is refused, and puts it back in service."""
    from broker.sdk.client import BrokerAPIError

    console().rule("6. Governance: an agreement change both parties approve; a suspension")
    outcome = _agreement_change(client, store, body)
    fp, officer, vn = "VN-GDC/fp-hcm-01", client["vn-gdc-hcm"], client["vn-gdc-registrar"]
    vn.suspend_focal_point(fp, "Duty officer on leave")
    _ok("VN-GDC's registrar suspended its duty desk", fp)
    try:
        officer.me()
        _ok("The desk's token", "still accepted (unexpected)")
    except BrokerAPIError as exc:
        _refused(f"{fp} asks the broker anything", exc.code, ": its tokens wait, unrevoked")
        outcome["suspended"] = exc.code
    vn.reactivate_focal_point(fp, "Officer back")
    _ok("VN-GDC's registrar put the desk back in service", f"{officer.me()['name']} answers again")
    return outcome


def _agreement_change(
    client: dict[str, Any], store: Keystore, body: dict[str, Any]
) -> dict[str, Any]:
    from broker.schemas import vocab
    from broker.sdk import agent
    from broker.sdk import agreements as changes

    officer, vn, kr = client["vn-gdc-hcm"], client["vn-gdc-registrar"], client["kr-kcs-registrar"]
    current = vn.get("/v1/admin/agreements/VN-KR-CUSTOMS/versions")[-1]["document"]
    # cites_wildlife the first time; on a re-run over the same database, the next not covered.
    offence = next((o for o in vocab.OFFENCES if o not in current["offences"]), None)
    if offence is None:
        _ok("VN-KR-CUSTOMS already covers every offence", "no change to propose")
        return {}
    fields: dict[str, Any] = {"recipients": ["KR-KCS"], "agreement": "VN-KR-CUSTOMS"}

    def dry_run() -> str:
        routing = agent.routing_for("VN-GDC/fp-hcm-01", offence=offence, body=body, **fields)
        said = officer.check(routing)
        return str(said.get("code") or said.get("decision"))

    _refused(f"A {offence} alert from VN-GDC to KR-KCS under VN-KR-CUSTOMS", dry_run())
    proposal = vn.propose_agreement_change(
        "VN-KR-CUSTOMS", dict(current, offences=[*current["offences"], offence])
    )
    _ok(
        f"VN-GDC's registrar proposed adding {offence}",
        f"proposal {proposal['id']}, policy hash {proposal['policy_sha256'][:12]}…",
    )
    proposal = changes.approve(vn, store.signing_key("VN-GDC"), proposal, "VN-GDC")
    _say(
        "…",
        "yellow",
        "VN-GDC approved it (agreement-approval+jws signed with VN-GDC's key)",
        f"{proposal['status']}: KR-KCS has not approved; the dry run still says {dry_run()}",
    )
    # KR-KCS's registrar reads the proposal from the broker and signs what it was shown.
    seen = next(p for p in kr.agreement_proposals("VN-KR-CUSTOMS") if p["id"] == proposal["id"])
    adopted = changes.approve(kr, store.signing_key("KR-KCS"), seen, "KR-KCS")
    _ok(
        "KR-KCS's registrar approved it: in effect at once",
        f"version {adopted['version']}; the dry run now says {dry_run()}",
    )
    return {"adopted": adopted["version"], "offence": offence}


def _pull_until(puller: Any, wanted: Any, rounds: int = 10) -> None:
    """Pull until an item `wanted` says is the one came (the relay makes it available within
    a moment of the commit; a pull ends at the end of what is already there)."""
    for _ in range(rounds):
        if any(wanted(p) for p in puller.pull(wait=5)):
            return
    raise RuntimeError("the expected inbox item did not come")


def _purge(client: Any, mid: str) -> str:
    """The first alert, six years on: VN-HK-CMAA-2013 keeps messages five, so the retention
    purge deletes its envelope and acknowledgement; the log keeps its leaves."""
    import uuid
    from datetime import timedelta

    from sqlalchemy import update

    from broker import db
    from broker.ids import utcnow
    from broker.lifecycle import service as lifecycle
    from broker.messages.models import Message
    from broker.sdk.client import BrokerAPIError

    console().rule("8. Six years on: the retention purge")
    # The demo moves this one alert's acceptance time back, as six years of waiting would.
    accepted = utcnow() - timedelta(days=6 * 366)
    db.call(
        lambda s: s.execute(
            update(Message).where(Message.mid == uuid.UUID(mid)).values(received_at=accepted)
        )
    )
    purged = db.call(lifecycle.purge)
    _ok(
        "The first alert is past VN-HK-CMAA-2013's retention (P5Y)",
        f"purged ({purged} message): its envelope and acknowledgement deleted",
    )
    try:
        client.status(mid)
        return "kept (unexpected)"
    except BrokerAPIError as exc:
        _ok("VN-GDC asks for its status", f"{exc.code}; the log keeps its leaves")
        return exc.code


def _results(client: Any) -> dict[str, int]:
    """VN-GDC, Mekong Dragon V's coordinator, reads the operation's results by phase."""
    results = client.get("/v1/operations/MEKONG-DRAGON-V/results")
    phases = {p["name"]: p.get("title") or p["name"] for p in results["phases"]}
    for phase in results["by_phase"]:
        name = phase["value"] or "outside every phase"
        rows = [g for g in results["groups"] if g["phase"] == phase["value"]]
        figures = "; ".join(
            " ".join(
                str(part)
                for part in (
                    g["agency"],
                    g["outcome"],
                    g["commodity"],
                    g["quantity_band"]
                    and g["quantity_band"].removesuffix("kg").replace("_", "-") + " kg",
                    f"×{g['count']}",
                )
                if part
            )
            for g in rows
        )
        _ok(f"Mekong Dragon V results, {phases.get(name, name)}", figures)
    listed = client.get(
        "/v1/operations/MEKONG-DRAGON-V/results/feedback", agency="HK-CED", outcome="seized"
    )
    leaves = ", ".join(str(i["leaf_index"]) for i in listed["items"] if i["leaf_index"] is not None)
    _ok(
        "Each figure traces to its signed feedback", f"HK-CED's on log leaves {leaves or 'pending'}"
    )
    return {str(p["value"]): int(p["count"]) for p in results["by_phase"]}


def _acks_back(client: Any, draft: Any, answer: dict[str, Any], log_key: str) -> list[str]:
    """The sender verifies each recipient's signed acknowledgement that the status returns."""
    from broker.crypto import keys
    from broker.sdk import evidence

    checked = evidence.ack_evidence(
        client,
        client.status(draft.mid),
        envelope_sha256=keys.sha256_b64u(draft.envelope.encode()),
        log_key=log_key,
    )
    for ack in checked:
        if ack.verified:
            at = "the log's time" if ack.time_source == "log" else "the broker's time"
            _ok(
                f"VN-GDC holds {ack.recipient}'s signed acknowledgement",
                f"{ack.status}; signature and key checked at {at}",
            )
        else:
            _refused(f"{ack.recipient}'s acknowledgement", "unverified", f": {ack.problem}")
    return [a.recipient for a in checked if a.verified]


# The demo's witnesses: run by two partner agencies, each with its own cosigner key.
DEMO_WITNESSES = {"HK-CED": "hk-ced.example/witness", "KR-KCS": "kr-kcs.example/witness"}


def _witnesses(
    admin: httpx2.Client, client: dict[str, Any], data_dir: Path, log_key: str, passphrase: str
) -> list[str]:
    """Each witness checks the checkpoints against its pinned log key and cosigns them."""
    from broker.crypto import note
    from broker.sdk import witness

    vkeys = []
    for agency, name in DEMO_WITNESSES.items():
        folder = data_dir / "witnesses" / agency
        known = witness.verifier_keys(folder)
        vkey = (
            note.format_cosigner_vkey(known[0].name, known[0].public_key)
            if known
            else witness.init(folder, name, passphrase)[1]
        )
        registered = admin.post("/v1/admin/witnesses", json={"vkey": vkey, "agency": agency})
        if registered.status_code != 409:  # 409: registered by an earlier demo run
            _check(registered)
        vkeys.append(vkey)
        follower = witness.Witness(
            client[f"{agency.lower()}-inbox"],
            witness.load(folder, passphrase),
            log_key,
            folder,
        )
        done = follower.run_once()
        sizes = ", ".join(str(c.size) for c in done) or "none new"
        _ok(f"{agency}'s witness cosigned", f"checkpoints of size {sizes}, each proven consistent")
    return vkeys


def _audit(
    auditor: Any,
    base_url: str,
    token: str,
    data_dir: Path,
    http: httpx2.Client,
    witness_keys: list[str],
) -> dict[str, Any]:
    """The auditor's view: the exchanges, the refusals, and an independent log check."""
    console().rule("10. The auditor reviews the exchange log and verifies it")
    try:
        events = auditor.get("/v1/audit/events", limit=500)
    except Exception as exc:
        _refused("The audit API", type(exc).__name__, f": {exc}")
        return {}
    items = events.get("items", events) if isinstance(events, dict) else events
    kinds: dict[str, int] = {}
    for e in items:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    _ok(
        "Events on the log",
        ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if k.startswith("msg.")),
    )
    for e in items:
        if e["kind"] == "msg.rejected":
            details = e["details"]
            recipients = ", ".join(details.get("recipients", []) or ["?"])
            _say(" ", "", f"{details.get('sender', '?')} → {recipients}", details.get("reason"))
    result: dict[str, Any] = {"kinds": kinds}
    try:
        from broker.audit import verify

        report = verify.verify_log(
            base_url,
            token,
            auditor.get("/v1/log/key"),
            state=data_dir / "auditor-checkpoint.json",
            full=True,
            http=http,
            witnesses=len(witness_keys),
            witness_keys=witness_keys,
        )
        _ok("broker audit verify", str(report))
        result["verified"] = True
    except Exception as exc:
        _refused("broker audit verify", type(exc).__name__, f": {exc}")
        result["verified"] = False
    return result


def run(*, port: int, keep_serving: bool, progress: Progress) -> dict[str, Any]:
    """Play the scenario on a migrated database, write demo-credentials.json, then serve.

    Serves until interrupted, unless `keep_serving` is false. Turns the cyclic garbage collector
    back on once the server has started (`broker demo` turns it off for the start-up).
    """
    import gc

    import httpx2

    from broker import keyring, serving, world
    from broker.config import settings

    cfg = settings()
    data_dir = cfg.data_dir.resolve()
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        with progress.running("starting the broker…"):
            server = ServerThread(port)
            server.start()
            server.wait_started()
    finally:
        gc.enable()
    base_url = f"http://{serving.address(cfg.host, server.server.config.port)}"
    progress.done(f"broker serving on {base_url}")
    admin_token = _bootstrap_admin()
    # One connection pool, and one TLS context (httpx2 builds one per client even for http://,
    # some 50 ms each), for every client of the scenario; each client sends its own token.
    with httpx2.HTTPTransport() as transport:
        api = httpx2.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=30,
            transport=transport,
        )
        loaded = _check(api.post("/v1/admin/world", json=world.demo_world()))
        progress.done(f"world loaded: {_loaded(loaded)}")
        _show_world(api)
        tokens = _tokens(api)
        store, passphrase, added = _keystore(api, data_dir / "demo-keystore")
        keys = sum(len(owners) for owners in DEMO_KEYS.values())
        progress.done(
            f"tokens for {len(tokens) + 1} principals; {keys} keys in the demo keystore, "
            f"{added} newly registered"
        )
        log_key = keyring.load_or_create().log_verifier_key
        outcomes = _scenario(base_url, tokens, store, data_dir, transport, log_key, api, passphrase)
    credentials = {
        "base_url": base_url,
        "docs": f"{base_url}/docs",
        "console": f"{base_url}/console/",
        "tokens": {ADMIN: {"role": "admin", "token": admin_token}, **tokens},
        "log_key": log_key,
        "data_dir": str(data_dir),
        "keystore": {"folder": str(store.folder), "passphrase": passphrase},
        "outcomes": outcomes,
    }
    path = credentials_path(data_dir)
    path.write_text(json.dumps(credentials, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    progress.done("scenario finished")
    _closing(credentials, path, keep_serving)
    if not keep_serving:
        server.stop()
        return credentials
    try:
        while server.is_alive():
            server.join(timeout=1)
    except KeyboardInterrupt:
        server.stop()
    return credentials


def _closing(credentials: dict[str, Any], path: Path, serving: bool) -> None:
    """Where the credentials are, and how to use them with the guides (and the running demo)."""
    from rich.text import Text

    from broker.config import Settings

    out = console()
    data_dir = Path(credentials["data_dir"])
    env = f"{_invoked_as()} demo env --as ROLE"
    if data_dir != Path(Settings.model_fields["data_dir"].default).resolve():
        env += f" --data-dir {shlex.quote(str(data_dir))}"
    out.print(Text(f"Tokens, keys and log key of every demo principal:\n  {path}"))
    out.print(Text(f"A guide's environment (ROLE: {', '.join(GUIDE_ROLES)}):"))
    out.print(Text(f"  {env}"))
    if not serving:
        return
    base_url = credentials["base_url"]
    auditor = credentials["tokens"]["oversight-auditor"]["token"]
    out.print(
        Text.assemble(
            "\n", (f"Serving on {base_url}", "bold"), " until Ctrl-C (API docs at /docs)."
        )
    )
    out.print(
        Text(f"Auditors' console at /console/, with the oversight-auditor's token:\n  {auditor}")
    )
    out.print(Text("Try the API as HK-CED's inbox:"))
    out.print(Text(f'  eval "$({env.replace("ROLE", "agency")})"'))
    out.print(Text('  curl -H "Authorization: Bearer $BROKER_TOKEN" "$BROKER_URL/v1/agreements"'))


def _invoked_as() -> str:
    """How the user ran `broker` (`.venv/bin/broker` in the README, with no venv active), so
    that the printed commands work when pasted; `broker` when run any other way."""
    import sys

    program = sys.argv[0] if sys.argv else ""
    return shlex.quote(program) if Path(program).name == "broker" else "broker"


def credentials_path(data_dir: Path) -> Path:
    return data_dir / CREDENTIALS


class DemoEnvError(Exception):
    """`broker demo env` cannot answer; the message names the option and the fix."""


def role_named(role: str) -> str:
    """The GUIDE_ROLES key `role` names (any case, `-` or `_`), or DemoEnvError."""
    key = role.strip().lower().replace("-", "_")
    if key in GUIDE_ROLES:
        return key
    starting = [r for r in GUIDE_ROLES if key and r.startswith(key)]
    close = starting or difflib.get_close_matches(key, list(GUIDE_ROLES), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise DemoEnvError(
        f"--as {role}: not a demo role{hint}: choose one of {', '.join(GUIDE_ROLES)}"
    )


def environment(data_dir: Path, role: str) -> str:
    """The `export` lines for `role`'s guide, from the demo's credentials in `data_dir`."""
    key = role_named(role)
    path = credentials_path(data_dir)
    try:
        credentials = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DemoEnvError(
            f"--data-dir: no {CREDENTIALS} in {data_dir}: run `broker demo` first, or pass "
            "the --data-dir it ran with"
        ) from None
    except (OSError, ValueError) as exc:
        raise DemoEnvError(
            f"--data-dir: cannot read {path} ({exc}): run `broker demo` again"
        ) from None
    name, variables, guide = GUIDE_ROLES[key]
    try:
        principal = credentials["tokens"][name]
        agency = str(principal.get("focal_point_id") or principal.get("agency_id") or "")
        registrar = credentials["tokens"].get(f"{agency.split('/')[0].lower()}-registrar")
        values = {
            "BROKER_URL": credentials["base_url"],
            "BROKER_TOKEN": principal["token"],
            "BROKER_KEYSTORE": credentials["keystore"]["folder"],
            "BROKER_KEY_PASSPHRASE": credentials["keystore"]["passphrase"],
            "BROKER_LOG_KEY": credentials["log_key"],
            "REGISTRAR_TOKEN": (registrar or credentials["tokens"][ADMIN])["token"],
        }
    except (KeyError, TypeError) as exc:
        raise DemoEnvError(
            f"--data-dir: {path} lacks {exc} (written by another version?): run `broker demo` again"
        ) from None
    who = principal.get("focal_point_id") or principal.get("agency_id") or ""
    lines = [
        f"# {name} ({key.replace('_', ' ')} {who}".rstrip() + f") for {guide}",
        f"# from {path}",
    ]
    lines += [f"export {var}={shlex.quote(str(values[var]))}" for var in variables]
    return "\n".join(lines)
