"""Pure-ASGI middleware: request metrics, API-key check, and the streaming body-size limit.

They sit outside FastAPI's exception handling, so when they refuse a request they send the one error
shape themselves, through :func:`app.http.errors.error_response` like the exception handler.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLargeError, UnauthorizedError
from app.http.errors import error_response
from app.serving.metrics import ServiceMetrics

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "MetricsMiddleware"]

log = logging.getLogger(__name__)

#: Label for requests that match no route (a fixed value keeps random paths out of the label set).
UNMATCHED_ROUTE = "<unmatched>"


class MetricsMiddleware:
    """Count requests, time them and track those in flight, labelled by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._template(scope)
        # 499 (nginx's "client closed request") when the app returns without answering: the client left.
        status = 499
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = 500  # the server's error middleware answers it with the one error shape
            raise
        finally:
            self.metrics.in_flight.dec()
            labels = {"method": scope["method"], "route": route, "status": str(status)}
            self.metrics.requests.labels(**labels).inc()
            self.metrics.request_seconds.labels(**labels).observe(time.perf_counter() - start)

    def _template(self, scope: Scope) -> str:
        # Matching up front (rather than reading the scope after routing) also labels the requests that
        # inner middleware refuses before they are routed (401, 413).
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED_ROUTE))
            if match is Match.PARTIAL and partial is None:
                partial = str(getattr(route, "path", UNMATCHED_ROUTE))
        return partial or UNMATCHED_ROUTE


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every path except the open ones.

    The comparison takes the same time whatever the key's first wrong byte (``hmac.compare_digest``).
    It runs before the body is read, so an unauthenticated client cannot make the server read an upload.
    """

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Iterable[str]) -> None:
        self.app = app
        self._key = api_key.encode()
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http" or scope["path"] in self._open or scope["method"] == "OPTIONS":
            # OPTIONS: CORS preflights carry no credentials by design.
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            reason = "missing" if not header else "invalid"
            response = error_response(
                UnauthorizedError(f"{reason} API key: send 'Authorization: Bearer <key>'")
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before reading them whole.

    A declared Content-Length over the limit is refused before one byte of the body is read; otherwise
    the bytes are counted as they arrive and the request is refused as soon as the count passes the
    limit. A body within the limit is handed on in memory as one message, so routes get it without
    temporary files.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, f"Content-Length {declared}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"more than {size} bytes")
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, body
            if not replayed:
                replayed = True
                message: Message = {"type": "http.request", "body": body, "more_body": False}
                body = b""  # the app holds the only reference from here on
                return message
            return await receive()  # e.g. http.disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        exc = PayloadTooLargeError(f"request body of {what} exceeds the limit of {self.max_bytes} bytes")
        # The unread rest of the body makes the connection unusable for another request.
        exc.headers["Connection"] = "close"
        await error_response(exc)(scope, receive, send)
