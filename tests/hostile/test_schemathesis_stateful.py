"""Stateful schema-driven fuzzing (schemathesis 4): sequences that follow explicit OpenAPI links.

`schema.as_state_machine()` on the app's own document infers links only among the admin routes
(many of them meaningless) and none into the message flow: the message id is chosen by the client
inside the signed envelope. So the app's OpenAPI dict is copied, cut down to the linked
operations, given explicit links and loaded with `schemathesis.openapi.from_dict` against the
live ASGI app, with link inference turned off (`phases.stateful.inference.algorithms = []`):

- message flow: submit `POST /v1/messages` -> `GET /v1/messages/{mid}` and
  `POST /v1/inbox/{mid}/ack`; `GET /v1/inbox` -> ack, status, next page (`after`); ack -> status
  and the same ack again;
- registry: create agency -> get it, add a focal point, set / read its push endpoint; register key
  -> get, rotate, retire, revoke; rotate -> the new key (get, retire, revoke) and the old one;
  retire -> revoke, get; revoke -> get, rotate.

`before_call` swaps every generated submit body for a freshly signed, encrypted VN-GDC -> HK-CED
envelope (every fourth submit replays the previous one: the 200 path), every ack body for a real
signed ack of the linked mid, every key body for a fresh public key, and runs the relay before
inbox and ack calls. Identities are per operation:

- `roles`: the VN-GDC focal point submits and reads the status, HK-CED polls and acknowledges,
  the admin drives the registry;
- `other`: the VN-GDC focal point still submits (the producer of the objects under attack), and
  every other call is made as KR-KCS (agency, and focal point for every other status read), with
  the module's victim alert and each submitted alert as secrets: no response may contain their
  envelope hash, receipt or envelope bytes, and a status read or ack of one must not succeed.

Checks on every response: the four built-ins of test_schemathesis.py (no 500, status code,
content type and body conform to the document), plus the leak checks above.

Budget: STATE_EXAMPLES sequences (default 12) of up to STATE_STEPS steps (default 8) per identity
set and backend (`state_settings` in conftest.py), derandomized unless HOSTILE_FUZZ_RANDOM=1.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from broker.crypto import envelope as env
from broker.crypto.keys import EncryptionKey, SigningKey
from tests.hostile.conftest import SENDER_FP, make_token, state_settings
from tests.hostile.leaks import needles
from tests.hostile.test_schemathesis import CHECKS, Victim
from tests.hostile.test_schemathesis import victim as victim  # the same module fixture
from tests.messages.conftest import Exchange, _sha, relay

pytestmark = pytest.mark.hostile

SUBMIT = ("POST", "/v1/messages")
STATUS = ("GET", "/v1/messages/{mid}")
INBOX = ("GET", "/v1/inbox")
ACK = ("POST", "/v1/inbox/{mid}/ack")
AGENCY_NEW = ("POST", "/v1/admin/agencies")
AGENCY_GET = ("GET", "/v1/admin/agencies/{agency_id}")
FP_NEW = ("POST", "/v1/admin/agencies/{agency_id}/focal-points")
PUSH_PUT = ("PUT", "/v1/admin/agencies/{agency_id}/push")
PUSH_GET = ("GET", "/v1/admin/agencies/{agency_id}/push")
KEY_NEW = ("POST", "/v1/admin/keys")
KEY_GET = ("GET", "/v1/admin/keys/{kid}")
KEY_ROTATE = ("POST", "/v1/admin/keys/{kid}/rotate")
KEY_RETIRE = ("POST", "/v1/admin/keys/{kid}/retire")
KEY_REVOKE = ("POST", "/v1/admin/keys/{kid}/revoke")
MESSAGE_OPS = {SUBMIT, STATUS, INBOX, ACK}

MID = "$response.body#/mid"
FIRST_MID = "$response.body#/items/0/mid"
AGENCY = "$response.body#/id"
KID = "$response.body#/kid"
SAME_AGENCY = "$request.path.agency_id"
SAME_KID = "$request.path.kid"

# (source, response status, link name, target, parameters)
LINKS: list[tuple[tuple[str, str], str, str, tuple[str, str], dict[str, str]]] = [
    (SUBMIT, "201", "status", STATUS, {"mid": MID}),
    (SUBMIT, "201", "ack", ACK, {"mid": MID}),
    (SUBMIT, "200", "status", STATUS, {"mid": MID}),
    (STATUS, "200", "ack", ACK, {"mid": MID}),
    (INBOX, "200", "ack", ACK, {"mid": FIRST_MID}),
    (INBOX, "200", "status", STATUS, {"mid": FIRST_MID}),
    (INBOX, "200", "next", INBOX, {"after": "$response.body#/next_cursor"}),
    (ACK, "200", "status", STATUS, {"mid": MID}),
    (ACK, "200", "again", ACK, {"mid": MID}),
    (AGENCY_NEW, "201", "get", AGENCY_GET, {"agency_id": AGENCY}),
    (AGENCY_NEW, "201", "focal_point", FP_NEW, {"agency_id": AGENCY}),
    (AGENCY_NEW, "201", "push", PUSH_PUT, {"agency_id": AGENCY}),
    (AGENCY_NEW, "201", "read_push", PUSH_GET, {"agency_id": AGENCY}),
    (PUSH_PUT, "200", "read", PUSH_GET, {"agency_id": SAME_AGENCY}),
    (KEY_NEW, "201", "get", KEY_GET, {"kid": KID}),
    (KEY_NEW, "201", "rotate", KEY_ROTATE, {"kid": KID}),
    (KEY_NEW, "201", "retire", KEY_RETIRE, {"kid": KID}),
    (KEY_NEW, "201", "revoke", KEY_REVOKE, {"kid": KID}),
    (KEY_ROTATE, "201", "get_new", KEY_GET, {"kid": KID}),
    (KEY_ROTATE, "201", "retire_new", KEY_RETIRE, {"kid": KID}),
    (KEY_ROTATE, "201", "revoke_new", KEY_REVOKE, {"kid": KID}),
    (KEY_ROTATE, "201", "get_old", KEY_GET, {"kid": SAME_KID}),
    (KEY_RETIRE, "200", "revoke", KEY_REVOKE, {"kid": SAME_KID}),
    (KEY_RETIRE, "200", "get", KEY_GET, {"kid": SAME_KID}),
    (KEY_REVOKE, "200", "get", KEY_GET, {"kid": SAME_KID}),
    (KEY_REVOKE, "200", "rotate", KEY_ROTATE, {"kid": SAME_KID}),
]
# Default budget per identity set and backend; STATE_EXAMPLES / STATE_STEPS override it.
EXAMPLES, STEPS = 12, 8
OPERATIONS = {op for link in LINKS for op in (link[0], link[3])}
SPARE_AGENCY = "TL-AT"  # a world agency in no flow of the module: keys registered to it are inert

# Which identity makes each call, per run ("other_status" alternates with "other_agency").
WHO = {
    "roles": {SUBMIT: "sender", STATUS: "sender", INBOX: "recipient", ACK: "recipient"},
    "other": {SUBMIT: "sender", STATUS: "other_status", INBOX: "other_agency", ACK: "other_agency"},
}
DEFAULT_WHO = {"roles": "admin", "other": "other_agency"}


def linked_document(raw: dict[str, Any]) -> dict[str, Any]:
    """The app's OpenAPI document cut down to OPERATIONS, with LINKS added to their responses."""
    doc = copy.deepcopy(raw)
    doc["paths"] = {
        path: {m: op for m, op in ops.items() if (m.upper(), path) in OPERATIONS}
        for path, ops in doc["paths"].items()
    }
    doc["paths"] = {path: ops for path, ops in doc["paths"].items() if ops}
    for (method, path), status, name, (t_method, t_path), parameters in LINKS:
        target = doc["paths"][t_path][t_method.lower()]["operationId"]
        response = doc["paths"][path][method.lower()]["responses"][status]
        response.setdefault("links", {})[name] = {
            "operationId": target,
            "parameters": parameters,
        }
    return doc


@pytest.fixture(scope="module")
def linked_schema(app: Any, armed: Exchange) -> Iterator[Any]:
    from schemathesis.python import asgi

    config = SchemathesisConfig()
    stateful = config.projects.default.phases.stateful
    stateful.inference.algorithms = []  # only the links above, none inferred
    stateful.generation.modes = [GenerationMode.POSITIVE]  # negative inputs: the stateless fuzz
    loaded = schemathesis.openapi.from_dict(linked_document(app.openapi()), config=config)
    loaded.app = app
    loaded.location = "/openapi.json"
    yield loaded
    asgi.shutdown_lifespans()


@dataclass
class Run:
    """What one stateful run sent, saw and found."""

    mode: str
    ex: Exchange
    headers: dict[str, dict[str, str]]
    secrets: list[bytes]
    victim_mid: str
    envelopes: dict[str, str] = field(default_factory=dict)  # mid -> envelope, all submitted
    key_use: dict[str, str] = field(default_factory=dict)  # kid -> "sig" / "enc"
    agencies: list[str] = field(default_factory=list)  # created in the run
    calls: int = 0
    linked: int = 0  # steps whose parameters came from a link
    by_op: dict[str, dict[int, int]] = field(default_factory=dict)
    submits: int = 0
    acks: int = 0
    status_reads: int = 0
    probes: int = 0  # status reads and acks by KR-KCS of a VN-GDC -> HK-CED alert
    failures: list[str] = field(default_factory=list)

    def who(self, op: tuple[str, str]) -> str:
        who = WHO[self.mode].get(op, DEFAULT_WHO[self.mode])
        if who == "other_status":
            self.status_reads += 1
            who = "other_agency" if self.status_reads % 2 else "other_focal_point"
        return who

    def prepare(self, case: Any, op: tuple[str, str]) -> None:
        """Replace generated bodies the broker would refuse on sight with real ones."""
        if op == SUBMIT:
            self.submits += 1
            if self.submits % 4 == 0 and self.envelopes:  # a replay: the original receipt, 200
                mid, envelope = next(reversed(self.envelopes.items()))
            else:
                routing = self.ex.routing(SENDER_FP)
                mid, envelope = routing["mid"], self.ex.envelope(routing)
                self.envelopes[mid] = envelope
            case.body = {"envelope": envelope}
            case.headers = {**(case.headers or {}), "Idempotency-Key": mid}
        elif op in (INBOX, ACK):
            relay()  # deliver what was accepted (the app's ticker would, within a second)
            if op == INBOX:
                case.query = {**(case.query or {}), "wait": 0}
            else:
                case.body = {"ack": self.ack(str(case.path_parameters["mid"]))}
        elif op == KEY_NEW:
            use = "enc" if len(self.key_use) % 3 == 2 else "sig"
            agency = self.agencies[-1] if self.agencies else SPARE_AGENCY
            case.body = {"agency_id": agency, "jwk": fresh_jwk(use)}
        elif op == KEY_ROTATE:
            use = self.key_use.get(str(case.path_parameters["kid"]), "sig")
            case.body = {"jwk": fresh_jwk(use)}
        elif op == FP_NEW and isinstance(case.body, dict):
            slug = str(case.body.get("id", "")).partition("/")[2] or "fp-01"
            case.body["id"] = f"{case.path_parameters['agency_id']}/{slug}"

    def ack(self, mid: str) -> str:
        """A signed ack of `mid` by the calling agency (the envelope hash of it, if known)."""
        agency = "HK-CED" if self.mode == "roles" else "KR-KCS"
        self.acks += 1
        payload = {
            "v": 1,
            "mid": mid,
            "envelope_sha256": _sha(self.envelopes.get(mid, "an envelope never submitted")),
            "status": "received" if self.acks % 3 == 1 else "decrypted",
            "at": int(time.time() * 1000),
        }
        return env.sign_compact(payload, self.ex.agency_signing[agency], env.TYP_ACK)

    def record(self, case: Any, op: tuple[str, str], response: Any) -> None:
        self.calls += 1
        label = f"{op[0]} {op[1]}"
        statuses = self.by_op.setdefault(label, {})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 300:
            return
        body = response.json()
        if op == SUBMIT:
            envelope = case.body["envelope"]
            if self.mode == "other":  # everything of it is now a secret from KR-KCS
                for secret in (body["envelope_sha256"], body["receipt"], envelope[-64:]):
                    self.secrets += needles(secret.encode())
        elif op in (KEY_NEW, KEY_ROTATE):
            self.key_use[body["kid"]] = body["use"]
        elif op == AGENCY_NEW:
            self.agencies.append(body["id"])
        elif op == INBOX:  # what a recipient polled it can acknowledge
            for item in body["items"]:
                self.envelopes.setdefault(item["mid"], item["envelope"])

    def leaks(self, case: Any, op: tuple[str, str], response: Any) -> str | None:
        """For the other agency: what of the VN-GDC -> HK-CED alerts the response gave away."""
        if self.mode != "other" or op == SUBMIT:
            return None
        mid = str(case.path_parameters.get("mid"))
        if op in (STATUS, ACK) and (mid in self.envelopes or mid == self.victim_mid):
            self.probes += 1
            if response.status_code < 300:
                return f"{op} on VN-GDC -> HK-CED alert {mid} answered {response.status_code}"
        sent = str(response.request.url).encode() + (response.request.body or b"")
        leaked = [s for s in self.secrets if s in response.content and s not in sent]
        if leaked:
            return f"revealed {leaked[:1]!r}"
        return None


def fresh_jwk(use: str) -> dict[str, Any]:
    key = SigningKey.generate() if use == "sig" else EncryptionKey.generate()
    return dict(key.public.jwk)


def machine_for(schema: Any, run: Run) -> type:
    base = schema.as_state_machine()

    class Machine(base):  # type: ignore[misc, valid-type]
        def step(self, input: Any) -> Any:
            if input.transition is not None:
                run.linked += 1
            return super().step(input)

        def before_call(self, case: Any) -> None:
            run.prepare(case, (case.method.upper(), case.path))

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            who = run.who((case.method.upper(), case.path))
            return {"headers": dict(run.headers[who]), "timeout": 45}

        def after_call(self, response: Any, case: Any) -> None:
            run.record(case, (case.method.upper(), case.path), response)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            op = (case.method.upper(), case.path)
            try:
                case.validate_response(response, checks=CHECKS, headers=kwargs.get("headers"))
            except Exception as exc:
                run.failures.append(f"{run.mode} {op}: {str(exc)[:1500]}")
                raise
            problem = run.leaks(case, op, response)
            if problem:
                run.failures.append(f"{run.mode} {case.method} {case.formatted_path}: {problem}")
                raise AssertionError(f"{run.failures[-1]}: {response.text[:300]}")

    return Machine


_runs: dict[str, Run] = {}


@pytest.mark.parametrize("mode", ["roles", "other"])
def test_stateful_fuzz(
    mode: str, backend: str, linked_schema: Any, armed: Exchange, victim: Victim
) -> None:
    tokens = {
        "sender": armed.fp_headers(SENDER_FP),
        "recipient": armed.agency_headers("HK-CED"),
        "admin": {"Authorization": f"Bearer {make_token('admin')}"},
        "other_agency": armed.agency_headers("KR-KCS"),
        "other_focal_point": armed.fp_headers("KR-KCS/fp-01"),
    }
    run = _runs[f"{backend}/{mode}"] = Run(
        mode=mode,
        ex=armed,
        headers=tokens,
        secrets=list(victim.secrets) if mode == "other" else [],
        victim_mid=victim.mid,
    )
    machine = machine_for(linked_schema, run)
    try:
        machine.run(settings=state_settings(EXAMPLES, STEPS))
    except FlakyStrategyDefinition:
        # Hypothesis replays choice sequences assuming the same answers; the broker's state
        # carries over between sequences (the inbox fills, a replayed submit answers 200), so
        # a later sequence may find other rules enabled and Hypothesis stops the run. Every
        # call made until then was checked; enough of them must have been made.
        assert run.calls >= EXAMPLES * STEPS // 2, (run.calls, run.by_op)
    except Exception:
        if not run.failures:
            raise
    assert not run.failures, "\n\n".join(run.failures[:5])
    assert run.linked > 0, "no step followed a link"
    ok = {op for op, statuses in run.by_op.items() if any(s < 300 for s in statuses)}
    if mode == "roles":  # the links reached the objects: the flow and registry succeeded
        for op in (SUBMIT, STATUS, ACK, KEY_NEW):
            assert f"{op[0]} {op[1]}" in ok, (op, run.by_op)
    else:  # KR-KCS reached nothing of VN-GDC -> HK-CED (the leak check above) but was tried
        assert run.probes > 0, run.by_op


def test_stateful_counts(backend: str, linked_schema: Any) -> None:
    """Report the counts quoted in docs/security-testing.md (runs after the stateful fuzz)."""
    runs = {key: r for key, r in _runs.items() if key.startswith(f"{backend}/")}
    if not runs:
        pytest.skip("runs after test_stateful_fuzz")
    for key, r in runs.items():
        print(
            f"\nschemathesis stateful {key}: {len(OPERATIONS)} operations, {len(LINKS)} links, "
            f"{r.calls} calls, {r.linked} linked steps, {r.submits} submits, {r.acks} acks, "
            f"{r.probes} probes: "
            f"{r.by_op}"
        )
        assert 500 not in {s for statuses in r.by_op.values() for s in statuses}
