"""Pure-ASGI middleware: request metrics, API-key check, and the bounded body reader.

They sit outside FastAPI's exception handling, so when they refuse a request they send the one error
shape themselves, through :func:`app.http.errors.error_response` like the exception handler.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import OverloadedError, PayloadTooLargeError, RequestBodyTimeoutError, UnauthorizedError
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
    """Bound every request body: its size, the bytes held across requests, and the time to read it.

    - A declared Content-Length over ``max_bytes`` is refused (413) before one byte is read; otherwise
      the bytes are counted as they arrive and the request is refused as soon as the count passes it.
    - All bodies being read or held by a request in progress share a budget of ``max_inflight_bytes``:
      a declared length is reserved before reading, chunked bodies reserve as they arrive, and a body
      that does not fit is answered 503 with Retry-After at once. The reservation is released when
      the request's response is done, since the route holds the body until then.
    - The whole body must arrive within ``read_timeout_s``: a client that stalls, or sends less than
      its Content-Length, gets 408 and the connection is closed, so it can hold neither memory nor a
      worker, nor delay shutdown for longer than that.

    A body within the limits is handed on in memory as one message, so routes get it without
    temporary files. The state is one counter on the event loop's thread: no lock is needed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_inflight_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.read_timeout_s = read_timeout_s
        #: Body bytes reserved by requests in progress.
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared_text = Headers(scope=scope).get("content-length")
        declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else 0
        if declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"Content-Length {declared_text}")
            return
        reservation = _Reservation(self)
        try:
            if not reservation.grow_to(declared):
                await self._busy(scope, receive, send)
                return
            body = await self._read(scope, receive, send, declared, reservation)
            if body is not None:
                await self.app(scope, _replay(body, receive), send)
        finally:
            reservation.release()

    async def _read(
        self, scope: Scope, receive: Receive, send: Send, declared: int, reservation: _Reservation
    ) -> bytes | None:
        """The whole body, or ``None`` once a refusal has been sent (or the client left)."""
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                exc = RequestBodyTimeoutError(
                    f"the request body did not arrive within {self.read_timeout_s:g} s "
                    f"({size} of {declared or 'an unknown number of'} bytes received)"
                )
                exc.headers["Connection"] = "close"
                await error_response(exc)(scope, receive, send)
                return None
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"more than {size} bytes")
                return None
            if not reservation.grow_to(size):  # chunked bodies reserve as they arrive
                await self._busy(scope, receive, send)
                return None
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = OverloadedError(
            f"the service holds {self.inflight} bytes of request bodies, its budget is "
            f"{self.max_inflight_bytes}; retry shortly",
            retry_after_s=2,
        )
        exc.headers["Connection"] = "close"  # the unread rest of the body makes the connection unusable
        await error_response(exc)(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        exc = PayloadTooLargeError(f"request body of {what} exceeds the limit of {self.max_bytes} bytes")
        # The unread rest of the body makes the connection unusable for another request.
        exc.headers["Connection"] = "close"
        await error_response(exc)(scope, receive, send)


class _Reservation:
    """One request's share of :attr:`BodyLimitMiddleware.inflight`."""

    def __init__(self, owner: BodyLimitMiddleware) -> None:
        self.owner = owner
        self.held = 0

    def grow_to(self, n: int) -> bool:
        """Hold ``n`` bytes in all; False (holding what it held) if that passes the budget."""
        extra = n - self.held
        if extra <= 0:
            return True
        if self.owner.inflight + extra > self.owner.max_inflight_bytes:
            return False
        self.owner.inflight += extra
        self.held = n
        return True

    def release(self) -> None:
        """Give everything back (the request is done)."""
        self.owner.inflight -= self.held
        self.held = 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the whole body once, then passes on (e.g. http.disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed, body
        if not replayed:
            replayed = True
            message: Message = {"type": "http.request", "body": body, "more_body": False}
            body = b""  # the app holds the only reference from here on
            return message
        return await receive()

    return replay
