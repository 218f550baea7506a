"""Pure ASGI middleware: request id, access log, HTTP metrics, body size limit and read deadline,
no-store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import metrics
from broker.errors import BrokerError, PayloadTooLarge, RequestTimeout
from broker.ids import new_id
from broker.logging import get_logger, request_id_var

_log = get_logger("broker.access")
_stdlib_log = logging.getLogger("broker.access")
_SAFE_RID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestContext:
    """Give every request an id, refuse oversized bodies early, log and count every request."""

    def __init__(self, app: ASGIApp, *, max_body: int, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = offered if _SAFE_RID.match(offered) else str(new_id())
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        received = sent = 0
        # Set when the body broke a limit: whatever the app answers after that (FastAPI turns
        # an error while reading the body into a 400) is dropped and replaced by 413 or 408.
        refused: type[BrokerError] | None = None
        response_started = False

        async def send_wrapped(message: Message) -> None:
            nonlocal status, response_started, sent
            if refused is not None and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                extra = [(b"x-request-id", rid.encode())]
                if path.startswith("/v1/"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._refuse(scope, send_wrapped, rid, PayloadTooLarge)
                return
            body_done = False
            deadline = asyncio.get_running_loop().time() + self.read_timeout_s

            async def receive_limited() -> Message:
                nonlocal received, refused, body_done
                if body_done:  # later receives wait for a disconnect: no deadline
                    return await receive()
                try:
                    # A body trickled in slowly (slowloris) is cut at the deadline. asyncio's
                    # own timeout, cheaper per receive than an anyio cancel scope.
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    refused = RequestTimeout
                    raise _BodyRefused from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        refused = PayloadTooLarge
                        raise _BodyRefused
                    body_done = not message.get("more_body", False)
                else:
                    body_done = True
                return message

            with contextlib.suppress(_BodyRefused):
                await self.app(scope, receive_limited, send_wrapped)
            if refused is not None and not response_started:
                error = refused
                refused = None
                await self._refuse(scope, send_wrapped, rid, error)
        finally:
            elapsed = time.perf_counter() - started
            metrics.observe_request(scope, root_path, status, elapsed, (received, sent))
            state: dict[str, Any] = scope.get("state", {})
            # structlog runs its processors before the stdlib level check: skip them all
            # when INFO is off (the benchmark's and many deployments' WARNING).
            if _stdlib_log.isEnabledFor(logging.INFO):
                _log.info(
                    "request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    principal=state.get("principal"),
                )
            request_id_var.reset(token)

    async def _refuse(self, scope: Scope, send: Send, rid: str, cls: type[BrokerError]) -> None:
        err = (
            cls(f"request bodies are limited to {self.max_body} bytes")
            if cls is PayloadTooLarge
            else cls(f"the request body was not received within {self.read_timeout_s:g} s")
        )
        body = json.dumps(
            err.problem(instance=scope["path"], request_id=rid).model_dump(exclude_none=True)
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status_code,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is never read: the connection cannot be reused.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyRefused(Exception):
    """Raised out of `receive` when the body breaks the size limit or the read deadline."""
