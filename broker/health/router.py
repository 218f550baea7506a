"""Liveness and readiness probes and the Prometheus metrics, for operators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from broker.deps import StrictJSONRoute
from broker.health import service

router = APIRouter(prefix="/health", tags=["health"], route_class=StrictJSONRoute)
public = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/live", summary="Liveness")
def live() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


_READINESS = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["status", "checks"],
}


@router.get(
    "/ready",
    summary="Readiness",
    responses={
        200: {
            "description": "every dependency answers",
            "content": {
                "application/json": {
                    "schema": _READINESS,
                    "example": {"status": "ok", "checks": {"database": "ok", "redis": "ok"}},
                }
            },
        },
        503: {
            "description": "a dependency is down (each check: `ok` or a short reason)",
            "content": {
                "application/json": {
                    "schema": _READINESS,
                    "examples": {
                        "not migrated": {
                            "summary": "the database needs `broker migrate`",
                            "value": {
                                "status": "unavailable",
                                "checks": {"database": "not migrated"},
                            },
                        }
                    },
                }
            },
        },
    },
)
async def ready() -> JSONResponse:
    """The database is reachable and migrated (and Redis, in the production profile)."""
    checks = await service.readiness()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@public.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics, for the scraper's credential only.

    The per-recipient gauges and per-route traffic tell who exchanges with whom (issue 15.7):
    `BROKER_METRICS_TOKEN` is the scraper's bearer token, or `BROKER_METRICS_PUBLIC=true` when
    the operator keeps /metrics off the public listener. A `def` route: the delivery gauges
    read the database (cached a few seconds).
    """
    service.admit_scraper(request.headers.get("authorization"))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
