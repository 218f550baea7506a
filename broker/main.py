"""create_app(): routers, problem+json error handlers, middleware, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker import __version__, migrations_check
from broker.agencies import router as agencies
from broker.agreements import router as agreements
from broker.audit import router as audit
from broker.auth import router as auth
from broker.config import Profile, settings
from broker.console import router as console
from broker.crypto.errors import CryptoError
from broker.deps import problem_response
from broker.directory import router as directory
from broker.errors import (
    PROBLEMS,
    BrokerError,
    FieldProblem,
    InternalError,
    InvalidRequest,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    Problem,
    Refused,
    Unavailable,
)
from broker.health import router as health
from broker.inbox import router as inbox
from broker.lifecycle import router as lifecycle
from broker.logging import configure_logging, get_logger
from broker.messages import router as messages
from broker.push import router as push
from broker.recalls import router as recalls
from broker.results import router as results

_log = get_logger("broker.app")

DESCRIPTION = """
Secure inter-agency information exchange. Focal points submit alerts that are **signed and
end-to-end encrypted** on their side; the broker checks the signed routing header against the
cooperation agreement's scope without reading the content, stores the envelope, delivers it to
partner inboxes and records every action on a Merkle transparency log.

Authenticate with `Authorization: Bearer brk_...` (the **Authorize** button on /docs). Every
error is RFC 9457 `application/problem+json` with a stable `code` and the `request_id`; each
operation lists the codes it may answer with, and `docs/reason-codes.md` lists them all.
"""


def install_openapi(app: FastAPI) -> None:
    """Generate the document once, with the problem schemas the error responses refer to.

    `error_responses` documents errors under `application/problem+json` only (what the
    handlers send), so FastAPI does not collect `Problem` from a response model by itself.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schema = Problem.model_json_schema(ref_template=_REF)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(schema.pop("$defs", {}))
            schemas["Problem"] = schema
            _examples_as_written(app, spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


_REF = "#/components/schemas/{model}"


def _examples_as_written(app: FastAPI, spec: dict[str, Any]) -> None:
    """Put back the examples' null members, which FastAPI's rendering drops (`exclude_none`).

    A routing header's `"operation": null` is required: without it the example is one the
    broker refuses. Request bodies take their examples from the route as written; component
    schemas from their pydantic model's own JSON schema.
    """
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        written = _body_examples(route)
        for method in context.methods or ():
            op = spec["paths"].get(context.path_format, {}).get(method.lower(), {})
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and written:
                body["examples"] = jsonable_encoder(written)
    models: dict[str, list[type[BaseModel]]] = {}
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        model = todo.pop()
        todo += model.__subclasses__()
        if model.__module__.startswith("broker."):
            models.setdefault(model.__name__, []).append(model)
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        found = models.get(name, [])
        if len(found) != 1:
            continue  # a name FastAPI qualified, or none of ours
        own = found[0].model_json_schema(ref_template=_REF)
        if "examples" in schema:
            schema["examples"] = own.get("examples", schema["examples"])
        for prop, sub in schema.get("properties", {}).items():
            mine = own.get("properties", {}).get(prop, {})
            if "examples" in sub and "examples" in mine:
                sub["examples"] = mine["examples"]


def _body_examples(route: APIRoute) -> dict[str, Any] | None:
    extra = (route.openapi_extra or {}).get("requestBody", {})
    media = extra.get("content", {}).get("application/json", {})
    if "examples" in media:
        return dict(media["examples"])
    for param in route.dependant.body_params:
        examples = getattr(param.field_info, "openapi_examples", None)
        if examples:
            return dict(examples)
    return None


def _detail(error: Mapping[str, Any]) -> str:
    """The message, with the parser's reason for a body that is not JSON (which member...)."""
    reason = (error.get("ctx") or {}).get("error")
    return (
        f"{error['msg']}: {reason}" if error["type"] == "json_invalid" and reason else error["msg"]
    )


def _pointer(loc: tuple[Any, ...]) -> str:
    return "/" + "/".join(str(part) for part in loc)


def install_error_handlers(app: FastAPI) -> None:
    """Every error, including 404, 405 and validation, becomes problem+json with a code."""

    @app.exception_handler(BrokerError)
    async def broker_error(request: Request, exc: BrokerError) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(CryptoError)
    async def crypto_error(request: Request, exc: CryptoError) -> JSONResponse:
        return problem_response(request, Refused(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldProblem(pointer=_pointer(tuple(e["loc"])), detail=_detail(e)) for e in exc.errors()
        ]
        malformed = any(e["type"] == "json_invalid" for e in exc.errors())
        cls = MalformedRequest if malformed else InvalidRequest
        return problem_response(request, cls(f"{len(errors)} invalid field(s)", errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return problem_response(request, NotFound("no such resource"))
        if exc.status_code == 405:
            err = MethodNotAllowed(
                f"{request.method} is not allowed here", headers=dict(exc.headers or {})
            )
            return problem_response(request, err)
        code = f"http.{exc.status_code}"
        return problem_response(
            request,
            BrokerError(str(exc.detail), code=code if code in PROBLEMS else "http.400"),
        )

    @app.exception_handler(OperationalError)
    async def db_down(request: Request, exc: OperationalError) -> JSONResponse:
        _log.error("database unavailable", error=type(exc).__name__)
        return problem_response(
            request, Unavailable("the database is unavailable", headers={"Retry-After": "5"})
        )

    @app.exception_handler(DataError)
    async def unstorable(request: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot hold is the client's input, not a fault: PostgreSQL
        # refuses NUL characters in text and JSON, and numbers beyond its integer types.
        _log.warning("value refused by the database", error=type(exc.orig).__name__)
        err = InvalidRequest("a value cannot be stored (NUL character or number out of range)")
        return problem_response(request, err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error", error=type(exc).__name__)
        return problem_response(request, InternalError("unexpected error; quote the request id"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await migrations_check.require_current()
    from broker import db, jobs, keyring, ratelimit, runtime, ticker
    from broker.audit import jobs as audit_jobs
    from broker.inbox import jobs as inbox_jobs
    from broker.inbox import notify
    from broker.lifecycle import jobs as lifecycle_jobs
    from broker.push import jobs as push_jobs

    keyring.load_or_create()
    ratelimit.on_startup()
    inbox_jobs.install()
    audit_jobs.install()
    push_jobs.install()
    lifecycle_jobs.install()
    worker = None
    if settings().profile is Profile.embedded:
        # The embedded default runs the same job functions in-process instead of Celery.
        worker = ticker.Ticker()
        worker.start()
    else:
        notify.ensure_listener()
        jobs.start()
    runtime.freeze_startup_heap()  # last: everything started is in the frozen heap
    try:
        yield
    finally:
        if worker is not None:
            worker.stop()
        await db.dispose()  # this event loop's connections


def create_app() -> FastAPI:
    """The broker's ASGI application."""
    cfg = settings()
    configure_logging(cfg.log_level, json=cfg.log_json)
    app = FastAPI(
        title="Inter-agency exchange broker",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if cfg.api_docs else None,
    )
    from broker.inbox import metrics as inbox_metrics
    from broker.middleware import RequestContext

    inbox_metrics.install()  # the delivery gauges, read from the database at scrape time

    app.add_middleware(
        RequestContext, max_body=cfg.max_request_bytes, read_timeout_s=cfg.request_read_timeout_s
    )
    install_error_handlers(app)
    install_openapi(app)
    # The hot paths first: a request is matched against the included routers in this order,
    # and each router tried costs time (docs/performance.md). No router's paths overlap.
    for module in (
        messages,
        inbox,
        health,
        auth,
        agencies,
        directory,
        agreements,
        audit,
        push,
        results,
        lifecycle,
        recalls,
    ):
        for name in ("router", "public", "admin"):
            router = getattr(module, name, None)
            if router is not None:
                app.include_router(router)
    app.mount("/console", console.console_app())
    static = resources.files("broker").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    if cfg.api_docs:  # the protocol is public; an operator may still keep its map private

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="Exchange broker API",
                swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                swagger_css_url="/static/swagger/swagger-ui.css",
                swagger_favicon_url="/static/console/favicon.svg",
            )

    return app
