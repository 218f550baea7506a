"""The auditor console (/console): server-rendered pages with htmx, for auditors only.

Sessions are server-side. Sign-in checks the auditor's API token, then opens a session row
bound to the principal and to that token (`console_sessions`, `service.open_session`); the
browser gets a random session id (`secrets.token_urlsafe(32)`) in a cookie (HttpOnly,
SameSite=Strict, Path=/console, Secure behind https), and the database keeps only its SHA-256.
The cookie is not the token and is no bearer token: the API never looks at it. Every console
request looks the session up and refuses it when it was signed out, when it has been idle
longer than `BROKER_CONSOLE_SESSION_IDLE_S` or open longer than `BROKER_CONSOLE_SESSION_MAX_S`,
or when its token has since been revoked or has expired or its principal was disabled (the
token is checked on every request, as the API checks it); each request slides the idle limit.
Signing in again gives a new id and ends the browser's previous session; signing out ends the
row, so the old cookie opens nothing even if it was copied. Sign-in and sign-out are recorded
like the console's other queries (`audit.queried`, `console.sign_in` / `console.sign_out`): the
log's event kinds are the published v1 vocabulary (broker/schemas/v1/log-leaf.json).

Cross-site requests: unsafe methods from another site are refused by the browser's own
headers (Origin, Sec-Fetch-Site), and every form of a signed-in page also carries the
session's anti-forgery token (`service.form_token`, an HMAC of the session id), checked on
every unsafe request. The headers alone would leave the forms to browsers that send them and
to proxies that pass them on; the token (a synchronizer token) depends on neither. The sign-in
form has no session yet: SameSite=Strict and the header checks cover it.

Every response is `no-store` with a self-only Content-Security-Policy (no inline script or
style), and every error is an HTML page, never a stack trace.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker import db, deps, ratelimit
from broker.audit import auditor, log
from broker.auth.service import Caller, Role
from broker.config import settings
from broker.console import jobs, service
from broker.deps import SessionDep
from broker.errors import BrokerError
from broker.ids import utcnow, whole_number
from broker.logging import get_logger

_log = get_logger("broker.console")

COOKIE = "broker_console"
COOKIE_PATH = "/console"
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Why the sign-in page is shown again (only these fixed texts, never text from the request).
NOTICES = {
    "required": "Sign in with an auditor token to continue.",
    "signed_out": "You have signed out.",
    "auth.token_revoked": "Your token was revoked. Sign in with a current auditor token.",
    "auth.token_expired": "Your token has expired. Sign in with a current auditor token.",
    "auth.unauthenticated": "Your session is no longer valid. Sign in again.",
    "console.session_expired": "Your session has expired. Sign in again.",
    "console.session_ended": "This session was signed out. Sign in again.",
    "auth.forbidden": "Only auditor tokens open the console.",
}
LOGIN_ERRORS = {
    "auth.token_revoked": "This token was revoked.",
    "auth.token_expired": "This token has expired.",
    "auth.unauthenticated": "This is not a valid token.",
}


class CrossSite(BrokerError, code="console.cross_site"): ...


templates = Jinja2Templates(directory=str(resources.files("broker.console").joinpath("templates")))


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "—"


def _clock(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "—"


def _mid(value: str) -> str:
    """A message id, shortened: UUIDv7s of one day share their first characters (the time)."""
    return value if len(value) < 16 else f"{value[:8]}…{value[-6:]}"


def _ms(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1000:
        return f"{value} ms"
    if value < 120_000:
        return f"{value / 1000:.1f} s"
    if value < 7_200_000:
        return f"{value / 60_000:.0f} min"
    return f"{value / 3_600_000:.1f} h"


def _ms_time(value: int | None) -> str:
    """Epoch milliseconds, as log leaves carry times, in UTC."""
    return "—" if value is None else _when(datetime.fromtimestamp(value / 1000, tz=UTC))


def _short(value: str | None, n: int = 12) -> str:
    if not value:
        return "—"
    return value if len(value) <= n else value[:n] + "…"


templates.env.filters["when"] = _when
templates.env.filters["clock"] = _clock
templates.env.filters["mid"] = _mid
templates.env.filters["ms"] = _ms
templates.env.filters["short"] = _short
templates.env.filters["ms_time"] = _ms_time


class SignInRequired(Exception):
    """No usable console session: send the browser to the sign-in page."""

    def __init__(self, notice: str) -> None:
        super().__init__(notice)
        self.notice = notice if notice in NOTICES else "required"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def refuse_cross_site(request: Request) -> None:
    """CSRF: an unsafe method must come from this origin (or from no browser context at all)."""
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise CrossSite(f"a {site} request may not change anything here")
    origin = request.headers.get("origin")
    if origin is not None:
        allowed = {_origin(str(request.base_url)), _origin(settings().public_base_url)}
        if origin.lower() not in allowed:
            raise CrossSite("the request came from another site")


def _secure_cookie() -> bool:
    return settings().public_base_url.lower().startswith("https://")


def _forget(response: Response) -> Response:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, secure=_secure_cookie(), httponly=True, samesite="strict"
    )
    return response


def _htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _sign_in(request: Request, notice: str) -> Response:
    target = f"{COOKIE_PATH}/login?notice={notice}"
    if _htmx(request):
        return _forget(Response(status_code=200, headers={"HX-Redirect": target}))
    return _forget(RedirectResponse(target, status_code=303))


def _error_page(
    request: Request,
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response:
    context = {
        "status": status,
        "title": title,
        "detail": detail,
        "request_id": getattr(request.state, "request_id", None),
    }
    headers = dict(headers or {})
    if _htmx(request):
        # Shown in the page's message area whatever element asked.
        headers.update({"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
        return templates.TemplateResponse(
            request, "_error.html", context, status_code=status, headers=headers
        )
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status, headers=headers
    )


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = str(e.get("loc", ("",))[-1])
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


class ConsoleRoute(APIRoute):
    """Console routes: CSRF check first; errors become HTML pages; security headers always."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                refuse_cross_site(request)
                response = await handler(request)
            except SignInRequired as exc:
                response = _sign_in(request, exc.notice)
            except BrokerError as exc:
                response = _error_page(
                    request, exc.status_code, exc.title, exc.detail, headers=exc.headers
                )
            except RequestValidationError as exc:
                response = _error_page(
                    request, 422, "Some values are not valid", _validation_detail(exc)
                )
            except StarletteHTTPException as exc:
                response = _error_page(request, exc.status_code, "Request refused", str(exc.detail))
            except (OperationalError, InterfaceError) as exc:  # failed connects too (db.py)
                _log.error("database unavailable", error=type(exc).__name__)
                response = _error_page(
                    request,
                    503,
                    "The broker is unavailable",
                    "The database cannot be reached. Try again in a minute.",
                    headers={"Retry-After": "5"},
                )
            except Exception as exc:
                _log.exception("console error", error=type(exc).__name__)
                response = _error_page(
                    request,
                    500,
                    "Something went wrong",
                    "The broker could not show this page. Quote the request id to the operators.",
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return guarded


router = APIRouter(include_in_schema=False, route_class=ConsoleRoute)


# --- who is signed in ----------------------------------------------------------------------


async def _signed_in(request: Request, session: AsyncSession, *, slide: bool) -> Caller:
    """The auditor of the request's console session, or the sign-in page (with why).

    Failed look-ups count against the client's budget of failed authentications, as the API's
    bearer tokens do.
    """
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise SignInRequired("required")
    address = ratelimit.client_address(request)
    await ratelimit.auth_allowed(address)
    try:
        caller = await service.authenticate_session(session, session_id, slide=slide)
    except BrokerError as exc:
        if exc.status_code == 401:
            await ratelimit.auth_failed(address, exc)
            raise SignInRequired(exc.code) from None
        if exc.code == "auth.forbidden":
            raise SignInRequired(exc.code) from None
        raise
    request.state.principal = caller.name
    request.state.form_token = service.form_token(session_id)
    await ratelimit.check(request, caller)
    return caller


async def console_auditor(request: Request, session: SessionDep) -> Caller:
    """The signed-in auditor; the request counts as activity (it slides the idle limit)."""
    return await _signed_in(request, session, slide=True)


async def console_watcher(request: Request, session: SessionDep) -> Caller:
    """The signed-in auditor, for a page's own polling: that is not activity, no slide."""
    return await _signed_in(request, session, slide=False)


async def console_form(
    request: Request,
    session: SessionDep,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Caller:
    """The signed-in auditor submitting a form of one of its pages (its anti-forgery token)."""
    caller = await _signed_in(request, session, slide=True)
    service.check_form_token(request.cookies.get(COOKIE, ""), csrf)
    return caller


Auditor = Annotated[Caller, Depends(console_auditor)]
Watcher = Annotated[Caller, Depends(console_watcher)]
FormAuditor = Annotated[Caller, Depends(console_form)]
Text = Annotated[str | None, Query(max_length=100)]
FormText = Annotated[str | None, Form(max_length=100)]


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    caller: Caller | None = None,
    status: int = 200,
) -> Response:
    visible = log.visible_agencies(caller) if caller is not None else None
    base = {
        "caller": caller,
        "oversees": sorted(visible) if visible is not None else None,
        "section": "",
        "form_token": getattr(request.state, "form_token", None) if caller is not None else None,
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


def _set_cookie(response: Response, session_id: str) -> Response:
    response.set_cookie(
        COOKIE,
        session_id,
        # The browser forgets it with the session's absolute limit; the server decides anyway.
        max_age=settings().console_session_max_s,
        path=COOKIE_PATH,
        secure=_secure_cookie(),
        httponly=True,
        samesite="strict",
    )
    return response


# --- sign-in -------------------------------------------------------------------------------


def _login_form(
    request: Request, *, notice: str | None, error: str | None, status: int = 200
) -> Response:
    cfg = settings()
    hours = cfg.console_session_max_s / 3600
    context = {
        "notice": notice,
        "error": error,
        "idle_minutes": cfg.console_session_idle_s // 60,
        "max_hours": int(hours) if hours.is_integer() else round(hours, 1),
    }
    return render(request, "login.html", context, status=status)


@router.get("/login")
async def login_page(
    request: Request,
    session: SessionDep,
    notice: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """The sign-in form (straight to the log when the session is still open)."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        try:
            await _signed_in(request, session, slide=True)
            return RedirectResponse(f"{COOKIE_PATH}/", status_code=303)
        except SignInRequired as exc:
            notice = notice or exc.notice
    response = _login_form(request, notice=NOTICES.get(notice or ""), error=None)
    return _forget(response) if session_id else response


@router.post("/login")
async def login(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form(max_length=400)] = "",
) -> Response:
    """Check an auditor token and open a console session for it (a new session id each time)."""
    token = token.strip()
    try:
        caller = await deps.authenticate(request, session, token)
    except BrokerError as exc:
        if exc.status_code != 401:
            raise
        message = LOGIN_ERRORS.get(exc.code, "This token does not open the console.")
        return _login_form(request, notice=None, error=message, status=401)
    if caller.role is not Role.auditor:
        message = (
            f"This is a {caller.role.value.replace('_', ' ')} token: "
            "only auditor tokens open the console."
        )
        return _login_form(request, notice=None, error=message, status=403)
    session_id = await service.open_session(
        session, caller, token, replacing=request.cookies.get(COOKIE)
    )
    return _set_cookie(RedirectResponse(f"{COOKIE_PATH}/", status_code=303), session_id)


@router.post("/logout")
async def logout(
    request: Request,
    session: SessionDep,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """End the console session on the server, and forget its cookie."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        service.check_form_token(session_id, csrf)
        await service.close_session(session, session_id)
    return _forget(RedirectResponse(f"{COOKIE_PATH}/login?notice=signed_out", status_code=303))


# --- the exchange log ----------------------------------------------------------------------


async def _choices(session: AsyncSession, caller: Caller) -> dict[str, Any]:
    return vars(await service.choices(session, caller))


@router.get("/")
async def exchange_log(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    since: Text = None,
    until: Text = None,
    agency: Text = None,
    agreement: Text = None,
    operation: Text = None,
    kind: Text = None,
    reason: Text = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = service.PAGE,
) -> Response:
    """Who sent what to whom under which agreement: message events, oldest first."""
    if not request.query_params:
        # A fresh visit opens on the last seven days.
        filters = service.Filters(since=utcnow().date() - timedelta(days=6))
    else:
        filters = service.parse_filters(
            since=since,
            until=until,
            agency=agency,
            agreement=agreement,
            operation=operation,
            kind=kind,
            reason=reason,
        )
    rows, next_cursor = await service.event_page(
        session, caller, filters.event_filter(), cursor=cursor, limit=limit
    )
    extra = {"limit": limit} if limit != service.PAGE else {}
    more = f"{COOKIE_PATH}/?{filters.query(cursor=next_cursor, **extra)}" if next_cursor else None
    context = {"rows": rows, "more": more, "continued": cursor is not None}
    if _htmx(request) and cursor:
        return render(request, "_rows.html", context, caller=caller)
    return render(
        request,
        "events.html",
        {
            **context,
            **await _choices(session, caller),
            "section": "log",
            "form": filters.form(),
            "first_page": f"{COOKIE_PATH}/?{filters.query()}",
        },
        caller=caller,
    )


@router.get("/messages/{mid}")
async def message(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    mid: Annotated[str, Path(max_length=64)],
) -> Response:
    """One message's timeline: accepted, delivered, fetched, acknowledged, or rejected attempts."""
    timeline = await service.message_timeline(session, caller, mid)
    return render(request, "message.html", {"t": timeline, "section": "log"}, caller=caller)


@router.get("/rejections")
async def rejections(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    since: Text = None,
    until: Text = None,
    agency: Text = None,
    agreement: Text = None,
    operation: Text = None,
    reason: Text = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = service.PAGE,
) -> Response:
    """Refused submissions: counts per reason code, and each attempt with its envelope hash."""
    filters = service.parse_filters(
        since=since,
        until=until,
        agency=agency,
        agreement=agreement,
        operation=operation,
        kind="msg.rejected",
        reason=reason,
    )
    f = filters.event_filter()
    rows, next_cursor = await service.event_page(session, caller, f, cursor=cursor, limit=limit)
    extra = {"limit": limit} if limit != service.PAGE else {}
    query = filters.query(kind=None, cursor=next_cursor, **extra)
    more = f"{COOKIE_PATH}/rejections?{query}" if next_cursor else None
    context = {"rows": rows, "more": more, "continued": cursor is not None}
    if _htmx(request) and cursor:
        return render(request, "_rejection_rows.html", context, caller=caller)
    summary = await auditor.summary(session, caller, f)
    return render(
        request,
        "rejections.html",
        {
            **context,
            **await _choices(session, caller),
            "section": "rejections",
            "form": filters.form(),
            "summary": summary,
        },
        caller=caller,
    )


# --- the signed export ---------------------------------------------------------------------


@router.post("/export")
async def export(
    caller: FormAuditor,
    session: SessionDep,
    fmt: Annotated[auditor.ExportFormat, Form(alias="format")] = "json",
    since: FormText = None,
    until: FormText = None,
    agency: FormText = None,
    agreement: FormText = None,
    operation: FormText = None,
    kind: FormText = None,
    reason: FormText = None,
) -> Response:
    """The events a page's filters select, as the file `GET /v1/audit/export` gives: the
    current signed checkpoint and each event's inclusion proof, verifiable offline.

    A form (POST, with the session's form token) rather than a link: an export is recorded on
    the log (`audit.exported`), so it changes something.
    """
    filters = service.parse_filters(
        since=since,
        until=until,
        agency=agency,
        agreement=agreement,
        operation=operation,
        kind=kind,
        reason=reason,
    )
    plan = await auditor.start_export(session, caller, filters.event_filter(), fmt)
    return StreamingResponse(
        auditor.export_chunks(db.session_scope, plan),
        media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json",
        headers={"Content-Disposition": f'attachment; filename="audit-export.{fmt}"'},
    )


# --- agreements ----------------------------------------------------------------------------


@router.get("/agreements")
async def agreements(request: Request, caller: Auditor, session: SessionDep) -> Response:
    """The agreements the auditor oversees a party of."""
    items = await service.agreements_for(session, caller)
    return render(
        request, "agreements.html", {"items": items, "section": "agreements"}, caller=caller
    )


@router.get("/agreements/{agreement_id}")
async def agreement(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    agreement_id: Annotated[str, Path(max_length=64)],
    days: Annotated[int, Query()] = 30,
) -> Response:
    """Volume over time (per day) and by direction, rejections by reason, delays."""
    view = await service.agreement_view(
        session, caller, agreement_id, days=days, today=utcnow().date()
    )
    return render(
        request,
        "agreement.html",
        {
            **vars(view),
            "a": view.item,
            "periods": service.PERIODS,
            "section": "agreements",
        },
        caller=caller,
    )


# --- operation results ---------------------------------------------------------------------


OperationId = Annotated[str, Path(max_length=64)]


@router.get("/operations")
async def operations(request: Request, caller: Auditor, session: SessionDep) -> Response:
    """The operations with a member the auditor oversees, each with a link to its results."""
    items = await service.result_operations(session, caller)
    return render(
        request, "operations.html", {"items": items, "section": "operations"}, caller=caller
    )


@router.get("/operations/{operation_id}")
async def operation_results(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    operation_id: OperationId,
    phase: Text = None,
) -> Response:
    """An operation's feedback rolled up, with charts and the grouped table; a phase at a time."""
    view = await service.operation_results(session, caller, operation_id, phase=phase)
    return render(
        request,
        "operation.html",
        {"v": view, "r": view.results, "charts": service.RESULT_CHARTS, "section": "operations"},
        caller=caller,
    )


@router.get("/operations/{operation_id}/results.csv")
async def operation_results_csv(
    caller: Auditor, session: SessionDep, operation_id: OperationId, phase: Text = None
) -> Response:
    """The grouped counts as CSV, as `GET /v1/operations/{id}/results.csv` gives them."""
    text = await service.operation_results_csv(session, caller, operation_id, phase=phase)
    name = f"{operation_id}-{phase}-results.csv" if phase else f"{operation_id}-results.csv"
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/operations/{operation_id}/feedback")
async def operation_feedback(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    operation_id: OperationId,
    phase: Text = None,
    week: Text = None,
    agency: Text = None,
    outcome: Text = None,
    commodity: Text = None,
    quantity_band: Text = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """The feedback messages behind one figure, with the log leaf of each."""
    figure = {
        "phase": phase,
        "week": week,
        "agency": agency,
        "outcome": outcome,
        "commodity": commodity,
        "quantity_band": quantity_band,
    }
    page, more = await service.operation_feedback(
        session, caller, operation_id, figure, cursor=cursor
    )
    return render(
        request,
        "operation_feedback.html",
        {
            "page": page,
            "more": more,
            "figure": {k: v for k, v in figure.items() if v},
            "continued": cursor is not None,
            "section": "operations",
        },
        caller=caller,
    )


# --- the transparency log ------------------------------------------------------------------


@router.get("/log")
async def log_page(
    request: Request,
    caller: Auditor,
    session: SessionDep,
    index: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> Response:
    """The latest checkpoint, log key and sequencer backlog; "verify now"; the full run."""
    return render(
        request,
        "log.html",
        {
            "state": await service.log_state(session),
            "all_agencies": log.visible_agencies(caller) is None,
            "index": index,
            "result": None,
            "full": await service.full_status(session, caller),
            "section": "verify",
        },
        caller=caller,
    )


@router.get("/log/full")
async def full_run(request: Request, caller: Watcher, session: SessionDep) -> Response:
    """The full verification's state, for the page's polling while a run is queued or running."""
    full = await service.full_status(session, caller)
    return render(request, "_full_run.html", {"full": full}, caller=caller)


def _leaf_index(value: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    index = whole_number(value)
    if index is None:
        raise service.BadFilter("the leaf index is a whole number such as 42")
    return index


@router.post("/log/verify")
async def verify_now(
    request: Request,
    caller: FormAuditor,
    session: SessionDep,
    full: Annotated[bool, Form()] = False,
    index: Annotated[str, Form(max_length=40)] = "",
    since: Annotated[int | None, Form(ge=1, le=2**62)] = None,
) -> Response:
    """Quick checks now with the auditor's own scope; with `full`, a full run in the background."""
    leaf = _leaf_index(index)
    result = await service.verify_now(session, caller, full=full, index=leaf, since=since)
    full_state = result.full_run or await service.full_status(session, caller)
    if _htmx(request):
        # The full verification's card is swapped in out of band (hx-swap-oob).
        context = {"result": result, "full": full_state, "oob": True}
        return render(request, "_verify_result.html", context, caller=caller)
    return render(
        request,
        "log.html",
        {
            "state": await service.log_state(session),
            "all_agencies": log.visible_agencies(caller) is None,
            "index": leaf,
            "result": result,
            "full": full_state,
            "section": "verify",
        },
        caller=caller,
    )


# --- the application mounted at /console --------------------------------------------------


async def _routing_error(request: Request, exc: Exception) -> Response:
    """404 and 405 from routing (no console route matched): an HTML page too."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    if status == 405:
        response = _error_page(request, 405, "Not allowed", "This page cannot be used that way.")
    else:
        response = _error_page(
            request, 404, "Page not found", "There is no such page in the console."
        )
    response.headers.update(SECURITY_HEADERS)
    return response


def console_app() -> FastAPI:
    """The console as its own application, for the broker to mount at /console.

    A mounted application keeps the console's cookie-authenticated HTML routes apart from the
    API's bearer-token routes (their role gates, OpenAPI, problem+json).
    """
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(router)
    # The embedded ticker's job for full verification runs (idle in production, where the
    # Celery task runs them); registered here, since only the console starts such runs.
    jobs.install()
    app.add_exception_handler(StarletteHTTPException, _routing_error)
    return app
