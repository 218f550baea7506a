"""Push delivery: POST each available delivery to the recipient agency's endpoint, if it has one.

Polling stays the source of truth: a push changes no delivery state, and a partner that misses
one finds the same item (same `seq`, same envelope) in its inbox. Push is at least once; the
partner deduplicates on `(sender, mid)`.

- **What is sent.** The inbox item as JSON (`seq`, `mid`, `sender`, `kind`, the envelope exactly
  as submitted, the broker's receipt, `envelope_sha256`, `received_at`, `log_index`), with a
  `Broker-Signature` header: a JWS (`typ` `broker-push+jws`) by the broker's receipt key over
  `{mid, recipient, envelope_sha256, seq, at}`. The partner verifies it with the key from
  `GET /v1/directory/broker` (`receipt_key`) and checks the envelope's hash.
- **When.** The relay writes a `push` outbox row (ref = delivery id) in the transaction that
  makes a delivery available. `deliver_due` claims due rows; the claim counts the attempt,
  records it as `sending` and leases the row in one committed transaction, so an attempt whose
  worker dies mid-POST is still counted; when the lease runs out, it is recorded as `lost` and
  retried.
- **Retries.** 2xx: delivered. 4xx other than 408 and 429: failed at once (the partner refused
  it; retrying would not help). Anything else, including timeouts: retried with exponential
  backoff and jitter (`Retry-After` honoured), scheduled in the database (`next_attempt_at`),
  never as a Celery countdown. After `push_max_attempts` the row is dead-lettered; an operator
  re-arms it with `broker admin push redeliver MID --agency X`.
- **Evidence.** Every attempt is a `push_attempts` row and a `msg.pushed` audit event with its
  status (delivered, retry, failed, dead, lost) and HTTP status; never the URL or the content.
- **Where to.** Only to public addresses, checked at registration and again at every attempt,
  which connects to the address it checked (`destinations`: internal addresses, DNS rebinding).
  A destination refused at an attempt is `failed` with the reason `push.destination_forbidden`
  and no connection is made; an attempt that got no answer records `push.no_response` whatever
  the network said (the detail goes to the log), so the records are no port scanner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx2
from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, jobs, keyring
from broker.agencies import repository as agencies
from broker.audit import service as audit
from broker.config import Environment, settings
from broker.crypto import envelope as env
from broker.crypto.keys import sha256_b64u
from broker.errors import BrokerError, FieldProblem, NotFound, exists
from broker.faults import crash_point
from broker.ids import epoch_ms, new_id, rfc3339, utcnow, whole_number
from broker.inbox import repository as outbox
from broker.logging import get_logger
from broker.messages.models import OUTBOX_PUSH
from broker.push import destinations, repository
from broker.push.destinations import DestinationForbidden
from broker.push.models import PushEndpoint
from broker.push.schemas import PushEndpointIn, Redelivery

_log = get_logger("broker.push")

TYP_PUSH = "broker-push+jws"
SIGNATURE_HEADER = "Broker-Signature"
BATCH = 20
PARALLEL = 8  # POSTs (each followed by its own short transaction) in flight at once
RUN_BUDGET_S = 30.0  # a run stops claiming after this; well under the task visibility timeout
RETRYABLE_4XX = frozenset({408, 429})
# Addresses of one name tried in turn when a connection is refused: two covers an IPv6 and an
# IPv4 address and keeps an attempt within its lease (`_lease`).
ADDRESSES_TRIED = 2
# What an attempt records when it was not made or got no answer: codes, never the network's words.
NO_RESPONSE = "push.no_response"
UNRESOLVABLE = "push.unresolvable"


class BadPushUrl(BrokerError, code="push.bad_url"): ...


class PushNotConfigured(BrokerError, code="push.not_configured"): ...


class NotYetAvailable(BrokerError, code="push.not_available"): ...


# --- endpoints ------------------------------------------------------------------------------


def check_url(url: str) -> None:
    """https (http only in development), a host, no credentials or fragment in the URL."""
    development = settings().environment is Environment.development
    allowed = {"https", "http"} if development else {"https"}
    problem = None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise BadPushUrl(f"not a URL: {exc}") from exc
    if not url.isascii() or not url.isprintable() or " " in url:
        problem = "the URL must be printable ASCII without spaces (percent-encode the rest)"
    elif parts.scheme not in allowed:
        problem = "push URLs must use https" + ("" if development else " outside development")
    elif not parts.hostname:
        problem = "the URL has no host"
    elif parts.username or parts.password:
        problem = "credentials do not belong in the URL"
    elif parts.fragment:
        problem = "a push URL has no fragment"
    if problem is not None:
        raise BadPushUrl(problem, errors=[FieldProblem(pointer="/url", detail=problem)])


async def set_endpoint(
    session: AsyncSession, agency_id: str, data: PushEndpointIn, *, actor: str
) -> PushEndpoint:
    """Register, change, enable or disable an agency's push endpoint."""
    exists(await agencies.agency(session, agency_id), f"agency {agency_id!r}")
    check_url(data.url)
    # Raises DestinationForbidden. A name that resolves to nothing is not forbidden: it reaches
    # nothing now, and every attempt checks again (DNS not live yet, a resolver down a moment).
    # A disabled endpoint is never pushed to: an administrator can always switch one off.
    if data.enabled:
        with contextlib.suppress(destinations.Unresolvable):
            await destinations.pin(data.url)
    now = utcnow()
    found = await repository.endpoint(session, agency_id)
    if found is None:
        found = PushEndpoint(
            agency_id=agency_id, url=data.url, enabled=data.enabled, created_at=now, updated_at=now
        )
        session.add(found)
    else:
        found.url, found.enabled, found.updated_at = data.url, data.enabled, now
    await session.flush()
    await audit.record(
        session,
        "push.endpoint_set",
        actor=actor,
        subject=agency_id,
        details={
            "agency": agency_id,
            "enabled": data.enabled,
            "url_sha256": sha256_b64u(data.url.encode()),
        },
    )
    return found


async def get_endpoint(session: AsyncSession, agency_id: str) -> PushEndpoint:
    return exists(await repository.endpoint(session, agency_id), f"push endpoint for {agency_id!r}")


# --- delivering -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """One leased push: everything the POST needs, and its attempt's identity."""

    outbox_id: int
    attempt_id: uuid.UUID
    attempt: int
    delivery_id: uuid.UUID
    recipient: str
    url: str
    seq: int
    mid: uuid.UUID
    sender: str
    envelope_sha256: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    http_status: int | None
    error: str | None
    retry_after_s: float | None = None
    refused: bool = False  # by the broker, before any connection: not retried


def backoff(attempt: int, retry_after_s: float | None = None) -> timedelta:
    """Exponential backoff with jitter (half to full of base * 2^(attempt-1)), capped."""
    cfg = settings()
    delay = min(cfg.push_backoff_max_s, cfg.push_backoff_base_s * 2.0 ** max(attempt - 1, 0))
    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cfg.push_backoff_max_s))
    return timedelta(seconds=delay)


def _lease() -> timedelta:
    return timedelta(seconds=2 * settings().push_timeout_s + 10)


def _event(
    claim_or_row: Any, status: str, *, attempt: int, http_status: int | None
) -> dict[str, Any]:
    return {
        "mid": str(claim_or_row.mid),
        "sender": claim_or_row.sender,
        "recipient": claim_or_row.recipient,
        "seq": claim_or_row.seq,
        "attempt": attempt,
        "status": status,
        "http_status": http_status,
    }


def _body(row: Any) -> bytes:
    item = {
        "seq": row.inbox_seq,
        "mid": str(row.mid),
        "sender": row.sender,
        "kind": row.kind,
        "envelope": row.envelope,
        "receipt": row.receipt,
        "envelope_sha256": row.envelope_sha256,
        "received_at": rfc3339(row.received_at),
        "log_index": row.leaf_index,
    }
    return json.dumps(item, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class _Lost:
    mid: uuid.UUID
    sender: str
    recipient: str
    seq: int | None


async def claim(session: AsyncSession, *, limit: int = BATCH) -> list[Claim]:
    """Lease due pushes: count the attempt and record it as `sending` before any POST."""
    cfg = settings()
    now = utcnow()
    rows = await outbox.claim_outbox(session, OUTBOX_PUSH, limit, now)
    if not rows:
        return []
    lost = await repository.mark_lost(session, [r.id for r in rows], now)
    if lost:
        await audit.record_many(
            session,
            [
                audit.event(
                    "msg.pushed",
                    actor="broker:push",
                    subject=row.agency_id,
                    details=_event(
                        _Lost(row.mid, row.sender, row.agency_id, row.inbox_seq),
                        "lost",
                        attempt=row.attempt,
                        http_status=None,
                    ),
                )
                for row in lost
            ],
        )
    used_up = [r.id for r in rows if r.attempts >= cfg.push_max_attempts]
    await outbox.dead_letter(
        session, used_up, now, f"gave up after {cfg.push_max_attempts} attempts"
    )
    live = [r for r in rows if r.attempts < cfg.push_max_attempts]
    found = await repository.targets(session, [r.ref for r in live], now)
    gone = [r.id for r in live if r.ref not in found]  # endpoint gone since, or message expired
    await outbox.mark_outbox_done(session, gone, now)
    live = [r for r in live if r.ref in found]
    await outbox.lease_outbox(session, [r.id for r in live], now + _lease())
    claims = [
        Claim(
            outbox_id=r.id,
            attempt_id=new_id(),
            attempt=r.attempts + 1,
            delivery_id=r.ref,
            recipient=t.recipient,
            url=t.url,
            seq=t.inbox_seq,
            mid=t.mid,
            sender=t.sender,
            envelope_sha256=t.envelope_sha256,
            body=_body(t),
        )
        for r in live
        for t in [found[r.ref]]
    ]
    await repository.add_attempts(
        session,
        [
            {
                "id": c.attempt_id,
                "outbox_id": c.outbox_id,
                "delivery_id": c.delivery_id,
                "agency_id": c.recipient,
                "attempt": c.attempt,
                "started_at": now,
            }
            for c in claims
        ],
    )
    return claims


def _retry_after(value: str | None) -> float | None:
    # Seconds only: HTTP-dates are rare from APIs; the backoff applies then.
    seconds = None if value is None else whole_number(value.strip())
    return None if seconds is None else float(seconds)


async def post(client: httpx2.AsyncClient, c: Claim) -> Outcome:
    """POST one push with the broker's signature to an address checked just now; never raises."""
    try:
        check_url(c.url)
        pinned = await destinations.pin(c.url)
    except (BadPushUrl, DestinationForbidden) as exc:
        _log.warning(
            "push destination refused",
            agency=c.recipient,
            attempt_id=str(c.attempt_id),
            code=exc.code,
        )
        return Outcome(None, exc.code, refused=True)
    except destinations.Unresolvable as exc:
        _log.warning(
            "push destination unresolvable",
            agency=c.recipient,
            attempt_id=str(c.attempt_id),
            error=str(exc),
        )
        return Outcome(None, UNRESOLVABLE)
    signature = env.sign_compact(
        {
            "mid": str(c.mid),
            "recipient": c.recipient,
            "envelope_sha256": c.envelope_sha256,
            "seq": c.seq,
            "at": epoch_ms(utcnow()),
        },
        keyring.load_or_create().receipt,
        TYP_PUSH,
    )
    headers = {
        "Host": pinned.authority,
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature,
        "User-Agent": "exchange-broker-push/1",
    }
    error: httpx2.HTTPError | None = None
    for address in pinned.addresses[:ADDRESSES_TRIED]:
        try:
            response = await client.post(
                pinned.url(address),
                content=c.body,
                headers=headers,
                extensions=pinned.extensions,
                follow_redirects=False,
            )
        except httpx2.ConnectError as exc:
            error = exc  # nothing was sent: the next checked address, if any
            continue
        except httpx2.HTTPError as exc:
            error = exc
            break
        return Outcome(
            response.status_code, None, _retry_after(response.headers.get("retry-after"))
        )
    # Open, closed and filtered ports would each fail their own way: the record says only that
    # there was no answer; the operator's log has the detail.
    _log.warning(
        "push got no response",
        agency=c.recipient,
        attempt_id=str(c.attempt_id),
        error=f"{type(error).__name__}: {error}"[:200],
    )
    return Outcome(None, NO_RESPONSE)


async def record(session: AsyncSession, c: Claim, outcome: Outcome) -> str:
    """Settle one attempt: its row, its audit event, and the outbox row's next step."""
    cfg = settings()
    now = utcnow()
    code = outcome.http_status
    if outcome.refused:
        status = "failed"
        await outbox.dead_letter(session, [c.outbox_id], now, outcome.error or "refused")
    elif code is not None and 200 <= code < 300:
        status = "delivered"
        await outbox.mark_outbox_done(session, [c.outbox_id], now)
    elif code is not None and 400 <= code < 500 and code not in RETRYABLE_4XX:
        status = "failed"
        await outbox.dead_letter(session, [c.outbox_id], now, f"refused with HTTP {code}")
    elif c.attempt >= cfg.push_max_attempts:
        status = "dead"
        reason = f"HTTP {code}" if code is not None else (outcome.error or "no answer")
        await outbox.dead_letter(session, [c.outbox_id], now, f"attempt {c.attempt}: {reason}")
    else:
        status = "retry"
        reason = f"HTTP {code}" if code is not None else (outcome.error or "no answer")
        when = now + backoff(c.attempt, outcome.retry_after_s)
        await outbox.retry_outbox_at(session, [c.outbox_id], when, reason, count=False)
    await repository.finish_attempt(
        session, c.attempt_id, status=status, http_status=code, error=outcome.error, now=now
    )
    await audit.record(
        session,
        "msg.pushed",
        actor="broker:push",
        subject=c.recipient,
        details=_event(c, status, attempt=c.attempt, http_status=code),
    )
    return status


class Clients:
    """One HTTP client per destination name, all sharing one TLS context.

    A push connects to the IP address it checked, and httpx pools connections by that address:
    with one client for every partner, a request for one name could go over a connection whose
    certificate was checked for another name on the same address (a shared host, a CDN).
    """

    def __init__(self, verify: ssl.SSLContext | None = None) -> None:
        self._verify = verify
        self._by_host: dict[str, httpx2.AsyncClient] = {}

    def get(self, url: str) -> httpx2.AsyncClient:
        """The client for the URL's host name (made on first use)."""
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""  # post() refuses the URL before it uses the client
        found = self._by_host.get(host)
        if found is None:
            if self._verify is None:  # built once per run: a TLS context costs tens of ms
                self._verify = httpx2.create_ssl_context(trust_env=False)
            found = httpx2.AsyncClient(
                verify=self._verify,
                timeout=settings().push_timeout_s,
                follow_redirects=False,
                trust_env=False,
            )
            self._by_host[host] = found
        return found

    async def aclose(self) -> None:
        for client in self._by_host.values():
            await client.aclose()


async def deliver_due(session_factory: db.SessionFactory, *, budget_s: float = RUN_BUDGET_S) -> int:
    """Claim and POST due pushes until none is due or the time budget is spent.

    Each claim and each outcome is a short transaction of its own: no connection is held
    while a partner answers.
    """
    deadline = time.monotonic() + budget_s
    async with session_factory() as session:
        claims = await claim(session)
    if not claims:
        return 0  # the usual sweep: no HTTP client built
    clients = Clients()
    slots = asyncio.Semaphore(PARALLEL)
    done = 0

    async def one(c: Claim) -> None:
        async with slots:
            outcome = await post(clients.get(c.url), c)
            crash_point("push.after_post")
            async with session_factory() as session:
                await record(session, c, outcome)

    try:
        while claims:
            # Every push of the batch runs to its end before the first failure is raised.
            results = await asyncio.gather(*(one(c) for c in claims), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            done += len(claims)
            if time.monotonic() >= deadline:
                break
            async with session_factory() as session:
                claims = await claim(session)
    finally:
        await clients.aclose()
    return done


# --- operator -------------------------------------------------------------------------------


async def redeliver(
    session: AsyncSession, mid: uuid.UUID, agency: str, *, actor: str
) -> list[Redelivery]:
    """Push a message to an agency again: re-arm a dead letter, or queue a new push."""
    endpoint = await repository.endpoint(session, agency)
    if endpoint is None or not endpoint.enabled:
        raise PushNotConfigured(f"{agency} has no enabled push endpoint")
    found = await repository.deliveries_by_mid(session, agency, mid)
    if not found:
        raise NotFound(f"no message {mid} for {agency}")
    now = utcnow()
    done: list[Redelivery] = []
    for d in found:
        if d.inbox_seq is None:
            raise NotYetAvailable(f"{mid} is not in {agency}'s inbox yet; it is pushed when it is")
        row = await repository.latest_push_row(session, d.id)
        if row is not None and row.done_at is None and row.dead_at is not None:
            row.dead_at, row.attempts, row.next_attempt_at, row.last_error = None, 0, None, None
            action = "rearmed"
        elif row is not None and row.done_at is None:
            if not await repository.sending(session, row.id):
                row.next_attempt_at = None  # due now instead of after its backoff
            action = "scheduled"
        else:
            await outbox.add_outbox(session, OUTBOX_PUSH, [d.id], now)
            action = "queued"
        done.append(Redelivery(mid=d.mid, sender=d.sender, recipient=agency, action=action))
        await audit.record(
            session,
            "msg.push_redeliver",
            actor=actor,
            subject=agency,
            details={"mid": str(d.mid), "sender": d.sender, "recipient": agency, "action": action},
        )
    await session.flush()
    jobs.after_commit(session, jobs.PUSH)
    return done
