"""`broker demo`: the world of ARCHITECTURE.md section 2 on the embedded default, over HTTP.

The broker serves in a background thread (uvicorn, on its own event loop); the scenario talks
to it as the agencies would, through the SDK and real HTTP. Only the first admin token is made
directly, through the services (`db.call`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, world
from broker.auth import repository as auth_repo
from broker.auth import service as auth
from broker.auth.service import Role
from broker.config import settings
from broker.crypto import keys as crypto_keys
from broker.sdk.keystore import Keystore

console = Console(highlight=False, width=120)
ADMIN = "demo-admin"
# Who the demo gives a token to: name -> principal document.
DEMO_PRINCIPALS: list[dict[str, Any]] = [
    {"name": "vn-gdc-hcm", "role": "focal_point", "focal_point_id": "VN-GDC/fp-hcm-01"},
    {"name": "hk-ced-fp", "role": "focal_point", "focal_point_id": "HK-CED/fp-01"},
    {"name": "kr-kcs-fp", "role": "focal_point", "focal_point_id": "KR-KCS/fp-01"},
    {"name": "nz-pol-fp", "role": "focal_point", "focal_point_id": "NZ-POL/fp-01"},
    {"name": "vn-mps-fp", "role": "focal_point", "focal_point_id": "VN-MPS/fp-01"},
    {"name": "vn-gdc-inbox", "role": "agency", "agency_id": "VN-GDC"},
    {"name": "hk-ced-inbox", "role": "agency", "agency_id": "HK-CED"},
    {"name": "kr-kcs-inbox", "role": "agency", "agency_id": "KR-KCS"},
    {"name": "cn-gacc-inbox", "role": "agency", "agency_id": "CN-GACC"},
    {"name": "vn-mps-inbox", "role": "agency", "agency_id": "VN-MPS"},
    {"name": "nz-pol-inbox", "role": "agency", "agency_id": "NZ-POL"},
    {"name": "oversight-auditor", "role": "auditor"},
]


class NotServing(RuntimeError):
    """The background server did not start (its port is taken, most likely)."""


class ServerThread(threading.Thread):
    """uvicorn in a background thread, so the scenario can talk to it over real HTTP."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        config = uvicorn.Config(
            "broker.main:create_app",
            factory=True,
            host=settings().host,
            port=port,
            log_config=None,
            access_log=False,
            **settings().uvicorn_proxy,  # type: ignore[arg-type]
        )
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        self.server.run()

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


async def _admin_token(session: AsyncSession) -> str:
    principal = await auth_repo.principal_by_name(session, ADMIN)
    if principal is None:
        principal = await auth.create_principal(session, name=ADMIN, role=Role.admin, actor="demo")
    _, secret = await auth.issue_token(session, principal, actor="demo", ttl_days=30)
    return secret


def _bootstrap_admin() -> str:
    """The one principal created directly: everything else goes through the API."""
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


def _show_world(api: httpx2.Client) -> None:
    agencies = _check(api.get("/v1/admin/agencies"))
    table = Table(title=f"Agencies ({len(agencies)})", title_justify="left")
    for col in ("id", "name", "country", "kind"):
        table.add_column(col)
    for a in agencies:
        table.add_row(a["id"], a["name"], a["country"], a["kind"])
    console.print(table)
    agreements = _check(api.get("/v1/admin/agreements"))
    table = Table(title=f"Agreements ({len(agreements)})", title_justify="left")
    for col in ("id", "parties", "offences", "exclusions", "policy sha256"):
        table.add_column(col)
    for ag in agreements:
        doc = ag["document"]
        parties = doc["parties"]
        shown = ", ".join(parties) if len(parties) <= 4 else f"{len(parties)} agencies"
        excl = "; ".join(
            f"{e['from']}→{e['to']}: no {', '.join(e['offences'])}" for e in doc["exclusions"]
        )
        table.add_row(
            ag["id"], shown, ", ".join(doc["offences"]), excl or "-", ag["sha256"][:12] + "…"
        )
    console.print(table)
    operations = _check(api.get("/v1/admin/operations"))
    table = Table(title=f"Operations ({len(operations)})", title_justify="left")
    for col in ("id", "agreement", "window", "members"):
        table.add_column(col)
    for op in operations:
        members = op["document"]["members"]
        table.add_row(
            op["id"],
            op["agreement_id"],
            f"{op['starts_at'][:10]} → {op['ends_at'][:10]}",
            ", ".join(members) if len(members) <= 4 else f"{len(members)} agencies",
        )
    console.print(table)


DEMO_KEYS = {
    "sig": [
        "VN-GDC/fp-hcm-01",
        "HK-CED/fp-01",
        "NZ-POL/fp-01",
        "HK-CED",
        "KR-KCS",
        "CN-GACC",
        "VN-GDC",
    ],
    "enc": ["VN-GDC", "HK-CED", "KR-KCS", "CN-GACC", "VN-MPS", "NZ-POL"],
}


def _keystore(api: httpx2.Client, folder: Path) -> tuple[Keystore, str]:
    """Generate and register the demo's private keys (agency side), reusing them on re-runs."""
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
    return store, passphrase


def _ok(step: str, detail: str) -> None:
    console.print(f"[green]✔[/green] {step}: {detail}")


def _refused(step: str, code: str, detail: str = "") -> None:
    console.print(f"[red]✘[/red] {step}: refused with [bold]{code}[/bold] {detail}")


def _scenario(
    base_url: str, tokens: dict[str, dict[str, Any]], store: Keystore, data_dir: Path
) -> dict[str, Any]:
    """The exchanges of ARCHITECTURE.md section 2, through the SDK and the HTTP API."""
    from broker.sdk import agent
    from broker.sdk.client import BrokerAPIError, BrokerClient

    outcomes: dict[str, Any] = {"refusals": {}}
    body = json.loads(
        resources.files("broker.fixtures").joinpath("bodies/ivory-shipment.json").read_text()
    )
    client = {name: BrokerClient(base_url, t["token"]) for name, t in tokens.items()}
    console.rule("1. A shipment alert, VN-GDC to HK-CED under VN-HK-CMAA-2013")

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
    _ok(
        "VN-GDC/fp-hcm-01 sent a signed, encrypted alert",
        f"mid {draft.mid}, broker receipt verified",
    )
    outcomes["accepted"] = draft.mid
    pulled = agent.InboxPuller(
        client["hk-ced-inbox"], store, "HK-CED", data_dir / "inbox-HK-CED"
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

    console.rule("2. A Mekong Dragon alert to several members, and seizure feedback")
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
    agent.send(client["vn-gdc-hcm"], multi)
    _ok("VN-GDC alerted " + ", ".join(members), f"mid {multi.mid}")
    for agency in members:
        name = f"{agency.lower()}-inbox"
        results = agent.InboxPuller(client[name], store, agency, data_dir / f"inbox-{agency}").pull(
            wait=10
        )
        _ok(f"{agency} opened it", ", ".join(sorted({r.status for r in results})))
    seizure = {
        "narrative": "Container CSQU3054383 opened at Kwai Chung: 212 kg of tusks under frozen fish.",
        "language": "en",
        "references": [multi.mid],
        "seizures": [
            {
                "type": "seizure",
                "date": "2026-11-22",
                "place": {"locode": "HKHKG"},
                "commodity": "wildlife",
                "quantity": {"value": 212, "unit": "kg"},
                "species": "Loxodonta africana",
                "cites_appendix": "I",
            }
        ],
    }
    feedback = agent.compose(
        client["hk-ced-fp"],
        store.signing_key("HK-CED/fp-01"),
        sender_fp="HK-CED/fp-01",
        recipients=["VN-GDC"],
        agreement="MEKONG-DRAGON",
        operation="MEKONG-DRAGON-V",
        offence="cites_wildlife",
        body=seizure,
        subject_types=["seizure"],
        kind="feedback",
        extra={
            "in_reply_to": multi.mid,
            "outcome": "seized",
            "commodity": "wildlife",
            "quantity_band": "100_1000kg",
        },
    )
    agent.send(client["hk-ced-fp"], feedback)
    _ok(
        "HK-CED reported a seizure back to VN-GDC",
        "outcome seized, 100-1000 kg (signed routing, content encrypted)",
    )
    outcomes["feedback"] = feedback.mid

    console.rule("3. Attempts the broker refuses, each with its reason")
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
            _refused(label, exc.code, f"(the dry run said {check.get('code')} before encrypting)")
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
    outcomes["audit"] = _audit(
        client["oversight-auditor"], base_url, tokens["oversight-auditor"]["token"], data_dir
    )
    for c in client.values():
        c.close()
    return outcomes


def _audit(auditor: Any, base_url: str, token: str, data_dir: Path) -> dict[str, Any]:
    """The auditor's view: the exchanges, the refusals, and an independent log check."""
    console.rule("4. The auditor reviews the exchange log and verifies it")
    try:
        events = auditor.get("/v1/audit/events", limit=500)
    except Exception as exc:
        console.print(f"audit API not available: {exc}")
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
            console.print(
                f"   refused: {e['details'].get('reason')}  {e['details'].get('sender', '?')} → "
                f"{', '.join(e['details'].get('recipients', []) or ['?'])}"
            )
    result: dict[str, Any] = {"kinds": kinds}
    try:
        from broker.audit import verify

        report = verify.verify_log(
            base_url,
            token,
            auditor.get("/v1/log/key"),
            state=data_dir / "auditor-checkpoint.json",
            full=True,
        )
        _ok("broker audit verify", str(report))
        result["verified"] = True
    except Exception as exc:
        _refused("broker audit verify", type(exc).__name__, str(exc))
        result["verified"] = False
    return result


def run(*, port: int, keep_serving: bool) -> dict[str, Any]:
    """Play the scenario on a migrated database, write demo-credentials.json, then serve.

    Serves until interrupted, unless `keep_serving` is false.
    """
    cfg = settings()
    data_dir = cfg.data_dir.resolve()
    started = time.monotonic()
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    console.print(f"[bold]Exchange broker demo[/bold] — embedded default, data in {data_dir}")
    server = ServerThread(port)
    server.start()
    server.wait_started()
    base_url = f"http://{cfg.host}:{port}"
    admin_token = _bootstrap_admin()
    with httpx2.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    ) as api:
        loaded = _check(api.post("/v1/admin/world", json=world.demo_world()))
        console.print(
            f"World loaded: created {loaded['created']}, already there {loaded['skipped']}"
        )
        _show_world(api)
        tokens = _tokens(api)
        store, passphrase = _keystore(api, data_dir / "demo-keystore")
    outcomes = _scenario(base_url, tokens, store, data_dir)
    from broker import keyring

    credentials = {
        "base_url": base_url,
        "docs": f"{base_url}/docs",
        "console": f"{base_url}/console/",
        "tokens": {ADMIN: {"role": "admin", "token": admin_token}, **tokens},
        "log_key": keyring.load_or_create().log_verifier_key,
        "data_dir": str(data_dir),
        "keystore": {"folder": str(store.folder), "passphrase": passphrase},
        "outcomes": outcomes,
    }
    path = data_dir / "demo-credentials.json"
    path.write_text(json.dumps(credentials, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    console.print(f"Credentials for every demo principal: {path}")
    console.print(f"Scenario finished in {time.monotonic() - started:.1f} s")
    if not keep_serving:
        server.stop()
        return credentials
    console.print(
        f"\n[bold]Serving on {base_url}[/bold] — API docs at {base_url}/docs — Ctrl-C to stop"
    )
    console.print(
        f"Auditor console at {base_url}/console/ — sign in with the oversight-auditor token: "
        f"{tokens['oversight-auditor']['token']}"
    )
    console.print(
        f"Try: curl -H 'Authorization: Bearer {tokens['hk-ced-inbox']['token']}' {base_url}/v1/agreements"
    )
    try:
        while server.is_alive():
            server.join(timeout=1)
    except KeyboardInterrupt:
        server.stop()
    return credentials


def credentials_path(data_dir: Path) -> Path:
    return data_dir / "demo-credentials.json"
