"""The client's exceptions: what the server said (its error code), or that it could not be reached."""

from __future__ import annotations

__all__ = ["MERError", "MERUnavailableError"]


class MERError(Exception):
    """The server refused or failed a request.

    Attributes:
        status: HTTP status (0 when no response came back).
        code: The server's stable error code (``audio_too_long``, ``unsupported_audio``, ...), or
            ``http_<status>`` for a response without the service's error shape.
        message: The server's explanation.
        retry_after_s: The server's ``Retry-After``, seconds, when it sent one.
    """

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class MERUnavailableError(MERError):
    """Still unavailable after the retries: 503s (overloaded, not ready, shutting down) or no connection."""
