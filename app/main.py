"""Service entry point: ``create_app(settings)`` builds the FastAPI application.

Run with ``uvicorn --factory app.main:create_app``. Settings are read here, once, and passed down; the
model's lifecycle is :mod:`app.serving.lifecycle`, the routes are :mod:`app.http.routes`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.http.deps import OPEN_PATHS, auth_dependencies
from app.http.errors import install_error_handlers
from app.http.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from app.http.openapi import install_openapi
from app.http.routes import ops, stream, ui, v1, v2
from app.logs import configure_logging
from app.serving import lifecycle
from app.serving.lifecycle import ServiceState
from app.serving.metrics import ServiceMetrics
from app.settings import Settings

DESCRIPTION = """Arousal and valence for every 500 ms frame of a music clip (Chaki et al. 2020: openSMILE
ComParE_2016 functionals into an attentive LSTM). Errors always have the shape
`{"error": {"code": "...", "message": "..."}}`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: Configuration; read from the environment when omitted.

    Returns:
        The FastAPI app, with the model loaded and warmed up in its lifespan.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)
    state = ServiceState(metrics=ServiceMetrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start(settings, state)
        try:
            yield
        finally:
            await lifecycle.stop(state)

    app = FastAPI(
        title="Music emotion recognition",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.mer = state  # read by app.http.deps
    secured = auth_dependencies(settings.api_key is not None)
    app.include_router(v1.router, dependencies=secured)
    app.include_router(ops.router)
    app.include_router(stream.router)  # checks the API key itself: WebSockets skip the middleware
    app.include_router(v2.router, dependencies=secured)
    if settings.ui:
        app.include_router(ui.router)  # the page; its API calls go through the routes above
    # The metrics middleware matches requests against route templates before routing, so that requests
    # an inner middleware refuses (401, 413) are labelled too. It gets the routers' own routes: FastAPI
    # may keep an included router as one opaque route without a path.
    templates = [r for r in app.router.routes if hasattr(r, "path")]
    routers = (v1.router, ops.router, v2.router, *((ui.router,) if settings.ui else ()))
    templates += [r for router in routers for r in router.routes]
    install_error_handlers(app)
    # Added innermost first: metrics see every response, CORS headers reach error responses, the key
    # is checked before the body is read, and the body limit applies to every route.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        max_inflight_bytes=settings.max_inflight_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
    )
    if settings.api_key is not None:
        app.add_middleware(
            ApiKeyMiddleware,
            api_key=settings.api_key.get_secret_value(),
            open_paths=(*OPEN_PATHS, *ui.PAGE_PATHS),
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=templates)
    install_openapi(app)
    return app
