"""The one place that turns an error into the JSON error response ``{"error": {"code", "message"}}``.

Every error the core and the runtime raise is a :class:`~app.core.errors.ServiceError` that carries its
own status and code; FastAPI's request-validation errors, Starlette's routing errors (unknown path,
wrong method) and, as a last resort, any other exception are mapped here too. The middleware, which
sits outside FastAPI's exception handling, answers through :func:`error_response` as well.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import InvalidRequestError, ServiceError

__all__ = ["HTTP_CODES", "error_response", "handle_error", "install_error_handlers"]

log = logging.getLogger(__name__)

#: Codes of the framework's own HTTP errors (routing), in the vocabulary of ``app.core.errors``.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error_response(exc: ServiceError) -> JSONResponse:
    """The one JSON error shape, ``{"error": {"code", "message"}}``, with the error's status and headers."""
    return JSONResponse(status_code=exc.status_code, content=exc.to_dict(), headers=exc.headers or None)


async def handle_error(_: Request, exc: Exception) -> Response:
    """The one exception handler: every error leaves as ``{"error": {"code", "message"}}``.

    Registered for :class:`ServiceError`, FastAPI's request validation errors, Starlette's HTTP
    exceptions (unknown route, wrong method) and, as a last resort, any exception (500).
    """
    if isinstance(exc, ServiceError):
        return error_response(exc)
    if isinstance(exc, RequestValidationError):
        problems = [
            f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        ]
        return error_response(InvalidRequestError("; ".join(problems) or "invalid request"))
    if isinstance(exc, StarletteHTTPException):
        # Routing's own errors (unknown path, wrong method); their headers (Allow) are kept.
        body = {"error": {"code": HTTP_CODES.get(exc.status_code, "http_error"), "message": str(exc.detail)}}
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)
    log.error("unhandled error", exc_info=exc)
    return error_response(ServiceError("internal error; the service log has the details"))


def install_error_handlers(app: FastAPI) -> None:
    """Register :func:`handle_error` for every kind of error an app can raise."""
    for exc_class in (ServiceError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handle_error)
