"""The plumbing ceiling next to the submit benchmark: FastAPI doing the least a submit must do.

Endpoints (served by uvicorn with the same flags as the broker; `bench/submit_bench.py`
starts it and points it at the benchmark's own PostgreSQL database with BENCH_PLUMB_DB):

- `GET /ping`: a trivial JSON answer, to measure the load generator's own ceiling.
- `POST /insert_sync`: parse the JSON body (`{"envelope": ...}`, as a submit's), one INSERT of the envelope and COMMIT through a sync
  SQLAlchemy Core connection on psycopg 3, in a `def` route (FastAPI's threadpool).
- `POST /insert_async`: the same with an `async def` route on the async engine and asyncpg.

Each request stores its body (the same bytes as a submit request), so the WAL volume per
commit is about the same as the message row of a submit. Pools: the broker's settings
(BENCH_POOL_SIZE, BENCH_MAX_OVERFLOW). The table `bench_plain` is created by the benchmark before the server starts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
