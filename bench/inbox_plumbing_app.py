"""The plumbing ceiling next to the inbox poll benchmark: the least an inbox page must do.

`bench/delivery_bench.py` starts it with the broker's uvicorn flags and points it at the
benchmark's own PostgreSQL database (BENCH_PLUMB_DB), where it copied the envelopes of the
broker's inbox into `bench_page (id bigint primary key, body text)`.

- `GET /ping`: a trivial answer (the load generator's own ceiling).
- `GET /page?after=N&limit=100`: one SELECT of the next `limit` rows by primary key through a
  sync SQLAlchemy Core connection on psycopg 3 in a `def` route (FastAPI's threadpool, as the
  broker's inbox route), returned as JSON `{"items": [{"seq", "envelope"}], "next_cursor"}`.

No authentication, no join, no fetch bookkeeping, no pydantic model: the difference to the
broker's `GET /v1/inbox` is what those cost.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, text

DB = os.environ.get("BENCH_PLUMB_DB", "postgres@127.0.0.1:5432/broker_bench_delivery")
PAGE = text("select id, body from bench_page where id > :after order by id limit :limit")

engine = create_engine(
    f"postgresql+psycopg://{DB}",
    pool_size=10,
    max_overflow=10,
    connect_args={"options": "-c synchronous_commit=on -c timezone=UTC"},
)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    engine.dispose()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/ping")
async def ping() -> JSONResponse:
    return JSONResponse({"ok": True})


@app.get("/page")
def page(
    after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> JSONResponse:
    with engine.connect() as conn:
        rows = conn.execute(PAGE, {"after": after, "limit": limit}).all()
    items = [{"seq": r.id, "envelope": r.body} for r in rows]
    return JSONResponse({"items": items, "next_cursor": str(rows[-1].id if rows else after)})
