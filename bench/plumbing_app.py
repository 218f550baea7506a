"""The plumbing ceiling next to the submit benchmark: FastAPI doing the least a submit must do.

Endpoints (served by uvicorn with the same flags as the broker; `bench/submit_bench.py`
starts it and points it at the benchmark's own PostgreSQL database with BENCH_PLUMB_DB):

- `GET /ping`: a trivial JSON answer, to measure the load generator's own ceiling.
- `POST /insert_sync`: parse the JSON body (`{"envelope": ...}`, as a submit's), one INSERT of the envelope and COMMIT through a sync
  SQLAlchemy Core connection on psycopg 3, in a `def` route (FastAPI's threadpool).
- `POST /insert_async`: the same with an `async def` route on the async engine and asyncpg.
- `POST /floor_async`: the database work of an accepted 2-recipient submit and nothing else,
  through the broker's own session and repository functions on its own tables, as the submit
  calls them (`db.session_scope`, `auth.repository.token_and_stamp`,
  `messages.repository.lock_and_find` and `add_accepted`, `audit.record_many`: the token and
  registry stamp, the `(sender, mid)` advisory lock and look-up, the message, deliveries,
  outbox and audit event INSERTs with their foreign keys, COMMIT). The rows are realistic but
  their values fixed (sender VN-GDC, 2 recipients); nothing relays them. No verification,
  scope, receipt signature, authentication rules or rate limit: the floor under any
  implementation of the submit on this schema and driver. The benchmark starts this server
  with the embedded profile, so the wake-ups the commit asks for cost nothing (no ticker runs
  here, and no Redis round trips as in production).
- `POST /floor_crypto_async`: the floor plus the cryptography no submit can skip, with the
  broker's own functions: the outer JWS split, its Ed25519 signature verified over the received
  bytes and its payload parsed strictly (`envelope.verify_outer`, the sender's key found by
  `kid` among the benchmark's fixed-seed keys), the envelope's SHA-256, and the signed receipt
  (`envelope.sign_compact`). Still no authentication rules, rate limit, routing schema, scope,
  JWE check or audit details.

Each plumbing request stores its body (the same bytes as a submit request), so the WAL volume per
commit is about the same as the message row of a submit. Pools: the broker's settings
(BENCH_POOL_SIZE, BENCH_MAX_OVERFLOW). The table `bench_plain` is created by the benchmark before the server starts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

DB = os.environ.get("BENCH_PLUMB_DB", "postgres@127.0.0.1:5432/broker_bench_submit")
OPTIONS = "-c synchronous_commit=on -c timezone=UTC"
INSERT = text("insert into bench_plain (body) values (:body)")

# The broker's pool settings (the benchmark passes them), so both pay the same for connections.
POOL = {
    "pool_size": int(os.environ.get("BENCH_POOL_SIZE", "20")),
    "max_overflow": int(os.environ.get("BENCH_MAX_OVERFLOW", "0")),
}

# One driver per server (BENCH_DRIVER), so that the idle pool of the other one does not hold
# connections: two pools of 20 per worker would exhaust PostgreSQL's max_connections.
DRIVER = os.environ.get("BENCH_DRIVER", "sync")
sync_engine = create_engine(
    f"postgresql+psycopg://{DB}",
    **(POOL if DRIVER == "sync" else {"pool_size": 1, "max_overflow": 0}),
    connect_args={"options": OPTIONS},
)
async_engine = create_async_engine(
    f"postgresql+asyncpg://{DB}",
    **(POOL if DRIVER == "async" else {"pool_size": 1, "max_overflow": 0}),
    connect_args={"server_settings": {"synchronous_commit": "on", "timezone": "UTC"}},
)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    from broker import db

    yield
    await async_engine.dispose()
    sync_engine.dispose()
    await db.dispose()  # the floors' engine (the broker's own, on this event loop)


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
CREATED = b'{"ok":true}'


@app.get("/ping")
async def ping() -> JSONResponse:
    return JSONResponse({"ok": True})


@app.post("/insert_sync", status_code=201)
def insert_sync(data: Annotated[dict[str, Any], Body()]) -> Response:
    with sync_engine.begin() as conn:
        conn.execute(INSERT, {"body": data["envelope"]})
    return Response(CREATED, status_code=201, media_type="application/json")


@app.post("/insert_async", status_code=201)
async def insert_async(data: Annotated[dict[str, Any], Body()]) -> Response:
    async with async_engine.begin() as conn:
        await conn.execute(INSERT, {"body": data["envelope"]})
    return Response(CREATED, status_code=201, media_type="application/json")


# The floor's fixed values: what a 2-recipient submit stores besides its envelope.
FLOOR_TOKEN_HASH = hashlib.sha256(b"floor").hexdigest()
FLOOR_SENDER, FLOOR_FP = "VN-GDC", "VN-GDC/fp-hcm-01"
FLOOR_RECIPIENTS = ["HK-CED", "KR-KCS"]
FLOOR_ROUTING = {
    "v": 1,
    "kind": "alert",
    "sender": FLOOR_SENDER,
    "sender_fp": FLOOR_FP,
    "recipients": FLOOR_RECIPIENTS,
    "agreement": "ASEAN-CUSTOMS-MOU",
    "operation": None,
    "offence": "wildlife",
    "subject_types": ["shipment", "route"],
    "handling": "TLP:AMBER",
    "iat": 1764892800,
    "exp": 1765497600,
}
FLOOR_RECEIPT = "r" * 420


@app.post("/floor_async", status_code=201)
async def floor_async(data: Annotated[dict[str, Any], Body()]) -> Response:
    envelope = data["envelope"]
    digest = hashlib.sha256(envelope.encode()).hexdigest()[:43]
    return await _floor(envelope, digest, FLOOR_RECEIPT)


@functools.cache
def _floor_keys() -> tuple[dict[str, Any], Any]:
    """The senders' public signing keys by kid (the benchmark's fixed seeds), a receipt key."""
    from submit_bench import EXTRA_FP, signing_key  # bench/ is the app dir

    from broker import world

    fps = [fp["id"] for fp in world.demo_world()["focal_points"]] + [EXTRA_FP]
    keys = {signing_key(fp).public.kid: signing_key(fp).public for fp in fps}
    return keys, signing_key("bench-receipts")


@app.post("/floor_crypto_async", status_code=201)
async def floor_crypto_async(data: Annotated[dict[str, Any], Body()]) -> Response:
    from broker.crypto import envelope as env
    from broker.crypto.keys import sha256_b64u

    keys, receipt_key = _floor_keys()
    envelope = data["envelope"]
    token = env.split_outer(envelope)
    env.verify_outer(token, keys[token.kid])
    digest = sha256_b64u(envelope.encode("utf-8"))
    receipt = env.sign_compact(
        {"v": 1, "mid": str(uuid.uuid4()), "envelope_sha256": digest, "accepted_at": 0},
        receipt_key,
        env.TYP_RECEIPT,
    )
    return await _floor(envelope, digest, receipt)


async def _floor(envelope: str, digest: str, receipt: str) -> Response:
    from broker import db
    from broker.audit import service as audit
    from broker.auth import repository as auth_repository
    from broker.messages import repository

    mid = uuid.uuid4()
    now = datetime.now(UTC)
    event = audit.event(
        "msg.accepted",
        actor=f"fp:{FLOOR_FP}",
        subject=FLOOR_SENDER,
        details={**FLOOR_ROUTING, "envelope_sha256": digest},
        at=now,
    )
    message = repository.NewMessage(
        id=uuid.uuid4(), sender=FLOOR_SENDER, mid=mid, kind="alert",
        sender_fp=FLOOR_FP, sender_kid="k" * 43, agreement_id="ASEAN-CUSTOMS-MOU",
        operation_id=None, offence="wildlife", handling="TLP:AMBER",
        routing=FLOOR_ROUTING, in_reply_to=None, envelope=envelope,
        envelope_sha256=digest, policy_sha256="p" * 43, receipt=receipt,
        event_id=event.id, iat=1764892800, exp=1765497600, received_at=now,
    )  # fmt: skip
    async with db.session_scope() as session:
        await auth_repository.token_and_stamp(session, FLOOR_TOKEN_HASH)
        await repository.lock_and_find(session, FLOOR_SENDER, mid)
        await repository.add_accepted(session, message, FLOOR_RECIPIENTS)
        await audit.record_many(session, [event])
    body = json.dumps({"mid": str(mid), "receipt": receipt, "event_id": str(event.id)})
    return Response(body, status_code=201, media_type="application/json")
