"""The plumbing ceiling next to the submit benchmark: FastAPI doing the least a submit must do.

Endpoints (served by uvicorn with the same flags as the broker; `bench/submit_bench.py`
starts it and points it at the benchmark's own PostgreSQL database with BENCH_PLUMB_DB):

- `GET /ping`: a trivial JSON answer, to measure the load generator's own ceiling.
- `POST /insert_sync`: parse the JSON body (`{"envelope": ...}`, as a submit's), one INSERT of the envelope and COMMIT through a sync
  SQLAlchemy Core connection on psycopg 3, in a `def` route (FastAPI's threadpool).
- `POST /insert_async`: the same with an `async def` route on the async engine and asyncpg.
- `POST /floor_async`: the database work of an accepted 2-recipient submit and nothing else, on
  asyncpg: the caller's token look-up with the registry stamp (the broker's statement, on its
  tables), the `(sender, mid)` advisory lock and look-up, the four INSERTs in one statement
  (message with the envelope, 2 deliveries, audit event, outbox row) and COMMIT, into copies of
  the broker's tables (`floor_*`: same columns, indexes and checks, no foreign keys) made by the
  benchmark. No verification, scope, receipt signature, authentication rules or rate limit: the
  floor under any implementation of the submit on this schema and driver.
- `POST /floor_crypto_async`: the floor plus the cryptography no submit can skip, with the
  broker's own functions: the outer JWS split, its Ed25519 signature verified over the received
  bytes and its payload parsed strictly (`envelope.verify_outer`, the sender's key found by
  `kid` among the benchmark's fixed-seed keys), the envelope's SHA-256, and the signed receipt
  (`envelope.sign_compact`). Still no authentication rules, rate limit, routing schema, scope,
  JWE check or audit details.

Each request stores its body (the same bytes as a submit request), so the WAL volume per
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
    yield
    await async_engine.dispose()
    sync_engine.dispose()


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


# The floor: the broker's statements, in asyncpg's parameter syntax.
FLOOR_CALLER = (
    "select (select stamp from registry_state where id = 1) as stamp,"
    " c.revoked_at, c.expires_at, p.id, p.name, p.role, p.agency_id, p.focal_point_id,"
    " p.audit_agencies, p.status"
    " from (select 1) as one"
    " left join (credentials as c join principals as p on p.id = c.principal_id)"
    " on c.token_hash = $1"
)
FLOOR_LOCK = (
    "select pg_try_advisory_xact_lock($1) as locked, m.mid, m.receipt,"
    " m.envelope_sha256, m.received_at, m.event_id"
    " from (select 1) as one"
    " left join floor_messages as m on m.sender = $2 and m.mid = $3"
)
FLOOR_ACCEPT = (
    "WITH m AS (INSERT INTO floor_messages (id, sender, mid, kind, sender_fp, sender_kid,"
    " agreement_id, operation_id, offence, handling, routing, in_reply_to, envelope,"
    " envelope_sha256, policy_sha256, receipt, event_id, iat, exp, received_at)"
    " VALUES ($1, $2, $3, 'alert', $4, $5, $6, NULL, $7, $8, $9::jsonb, NULL, $10, $11, $12,"
    " $13, $14, $15, $16, $17)),"
    " d AS (INSERT INTO floor_deliveries (id, message_id, recipient, state, created_at)"
    " SELECT gen_random_uuid(), $1, r, 'queued', $17"
    " FROM unnest($18::varchar[]) AS r),"
    " e AS (INSERT INTO floor_audit_events (id, kind, actor, subject, details, created_at,"
    " leaf_index) VALUES ($14, 'msg.accepted', $19, $2, $20::jsonb, $17, NULL))"
    " INSERT INTO floor_outbox (topic, ref, created_at, attempts)"
    " VALUES ('deliver', $1, $17, 0)"
)
FLOOR_TOKEN_HASH = hashlib.sha256(b"floor").hexdigest()
FLOOR_RECIPIENTS = ["HK-CED", "KR-KCS"]
# What a 2-recipient submit stores besides its envelope, at about its size.
FLOOR_ROUTING = json.dumps(
    {
        "v": 1,
        "kind": "alert",
        "sender": "VN-GDC",
        "sender_fp": "VN-GDC-FP-HCMC-01",
        "recipients": FLOOR_RECIPIENTS,
        "agreement": "ASEAN-CUSTOMS-MOU",
        "operation": None,
        "offence": "wildlife",
        "subject_types": ["shipment", "route"],
        "handling": "TLP:AMBER",
        "iat": 1764892800,
        "exp": 1765497600,
    }
)
FLOOR_DETAILS = json.dumps({**json.loads(FLOOR_ROUTING), "envelope_sha256": "x" * 43})
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
    mid, message_id, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    lock_key = int.from_bytes(hashlib.sha256(mid.bytes).digest()[:8], "big", signed=True)
    now = datetime.now(UTC)
    async with async_engine.connect() as sa_conn:
        raw = await sa_conn.get_raw_connection()
        conn: Any = raw.driver_connection
        async with conn.transaction():
            await conn.fetchrow(FLOOR_CALLER, FLOOR_TOKEN_HASH)
            await conn.fetchrow(FLOOR_LOCK, lock_key, "VN-GDC", mid)
            await conn.execute(
                FLOOR_ACCEPT,
                message_id, "VN-GDC", mid, "VN-GDC-FP-HCMC-01", "k" * 43, "ASEAN-CUSTOMS-MOU",
                "wildlife", "TLP:AMBER", FLOOR_ROUTING, envelope, digest, "p" * 43,
                receipt, event_id, 1764892800, 1765497600, now, FLOOR_RECIPIENTS,
                "fp:VN-GDC-FP-HCMC-01", FLOOR_DETAILS,
            )  # fmt: skip
    body = json.dumps({"mid": str(mid), "receipt": receipt, "event_id": str(event_id)})
    return Response(body, status_code=201, media_type="application/json")
