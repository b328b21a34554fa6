"""uvicorn's HTTP protocol with the one JSON error shape for the 400s it sends itself.

A request the HTTP parser cannot read (a malformed request line, a bad ``Content-Length``, ...) never
reaches the application: uvicorn answers it with a plain-text 400 of its own. :class:`JsonErrorProtocol`
is uvicorn's own protocol (httptools when installed, h11 otherwise, as uvicorn's ``auto`` picks) with
that response in the service's JSON shape. Select it with
``uvicorn --http app.http.protocols:JsonErrorProtocol`` (the Makefile, Dockerfile and tests do).
"""

from __future__ import annotations

import json

from app.http.errors import HTTP_CODES

try:
    import httptools  # noqa: F401 - only whether it is there: uvicorn's "auto" rule
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base
else:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base  # type: ignore[assignment]

__all__ = ["JsonErrorProtocol"]


class JsonErrorProtocol(_Base):
    """uvicorn's HTTP protocol, answering unparseable requests with ``{"error": {"code", "message"}}``."""

    def send_400_response(self, msg: str) -> None:
        """Send 400 in the JSON error shape and close the connection (the stream is unusable)."""
        body = json.dumps({"error": {"code": HTTP_CODES[400], "message": msg}}).encode()
        head = (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()
