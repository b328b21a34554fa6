"""One error hierarchy for the whole service.

Every error the core raises is a :class:`ServiceError`; its class carries the HTTP status and a stable
machine-readable ``code``, so the HTTP layer needs exactly one handler and one JSON shape
(``{"error": {"code", "message"}}``). The core modules never import the web framework.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base class of every error the service reports to a client.

    Attributes:
        status_code: HTTP status the error maps to.
        code: Stable, machine-readable error code.
        message: Human-readable explanation.
    """

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: HTTP headers the response must carry (Retry-After, WWW-Authenticate); the one handler adds them.
        self.headers: dict[str, str] = {}

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Return the one JSON error shape."""
        return {"error": {"code": self.code, "message": self.message}}


class UnsupportedAudioError(ServiceError):
    """The bytes are not audio in a format we can decode (or the sample rate is out of range)."""

    status_code = 415
    code = "unsupported_audio"


class CorruptAudioError(ServiceError):
    """The format was recognised but the data is damaged (truncated, non-finite samples, ...)."""

    status_code = 422
    code = "corrupt_audio"


class EmptyAudioError(ServiceError):
    """The audio holds no samples at all."""

    status_code = 422
    code = "empty_audio"


class AudioTooShortError(ServiceError):
    """The audio is shorter than one analysis frame."""

    status_code = 422
    code = "audio_too_short"


class AudioTooLongError(ServiceError):
    """The audio is longer than the configured maximum duration."""

    status_code = 413
    code = "audio_too_long"


class AudioTooLargeError(ServiceError):
    """The audio would need more native samples (frames x channels) decoded than the configured budget."""

    status_code = 413
    code = "audio_too_large"


class PayloadTooLargeError(ServiceError):
    """The request body exceeds the configured byte limit."""

    status_code = 413
    code = "payload_too_large"


class InvalidFeaturesError(ServiceError):
    """A precomputed feature array has the wrong shape, dtype or non-finite values."""

    status_code = 422
    code = "invalid_features"


class InvalidRequestError(ServiceError):
    """A request parameter is out of range or inconsistent."""

    status_code = 422
    code = "invalid_request"


class ContractError(ServiceError):
    """A model's I/O contract is missing, inconsistent, or cannot be honoured by this build."""

    status_code = 500
    code = "invalid_contract"


class ModelNotReadyError(ServiceError):
    """No model is loaded (missing or invalid model file) or it has not warmed up yet."""

    status_code = 503
    code = "model_not_ready"


class OverloadedError(ServiceError):
    """The service is saturated; the client should retry after ``retry_after_s`` seconds."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))
        self.headers["Retry-After"] = str(self.retry_after_s)


class ShuttingDownError(ServiceError):
    """The service is draining for shutdown and takes no new work."""

    status_code = 503
    code = "shutting_down"


class RequestTimeoutError(ServiceError):
    """The request took longer than the configured request timeout."""

    status_code = 504
    code = "timeout"


class TooManyFramesError(ServiceError):
    """Precomputed features span more frames than the configured maximum duration allows."""

    status_code = 413
    code = "too_many_frames"


class RequestBodyTimeoutError(ServiceError):
    """The request body did not arrive within the configured body-read time."""

    status_code = 408
    code = "body_timeout"


class UnsupportedMediaTypeError(ServiceError):
    """The request body's Content-Type is not one this route accepts."""

    status_code = 415
    code = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    """A protected route was called without the configured API key."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = "Bearer"


class NotFoundError(ServiceError):
    """No such route or model."""

    status_code = 404
    code = "not_found"
