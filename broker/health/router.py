"""Liveness and readiness probes for operators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker.health import service

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "a dependency is down"}})
def ready() -> JSONResponse:
    """The database is reachable and migrated (and Redis, in the production profile)."""
    checks = service.readiness()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
