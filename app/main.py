"""Service entry point: ``create_app(settings)`` builds the FastAPI application.

Run with ``uvicorn --factory app.main:create_app``. Settings are read here, once, and passed down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.api import OPEN_PATHS, add_routes, handle_error, install_openapi
from app.errors import ServiceError
from app.features import FeatureExtractor
from app.logs import configure_logging
from app.metrics import ServiceMetrics
from app.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from app.predictor import Predictor
from app.service import EmotionService, ServiceState
from app.settings import Settings

log = logging.getLogger("app")

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
        await _load(settings, state)
        try:
            yield
        finally:
            # uvicorn has let the in-flight requests finish before it gets here; stop() still drains
            # whatever sits in the queues before the threads go.
            state.ready, state.reason = False, "shutting down"
            state.metrics.ready.set(0)
            if state.service is not None:
                await state.service.stop()
                log.info("stopped: queues drained, worker threads joined")

    app = FastAPI(
        title="Music emotion recognition",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    add_routes(app, state, protect=settings.api_key is not None)
    for exc_class in (ServiceError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handle_error)
    # Added innermost first: metrics see every response, CORS headers reach error responses, the key
    # is checked before the body is read, and the body limit applies to every route.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.api_key is not None:
        app.add_middleware(
            ApiKeyMiddleware, api_key=settings.api_key.get_secret_value(), open_paths=OPEN_PATHS
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=app.router.routes)
    install_openapi(app)
    return app


async def _load(settings: Settings, state: ServiceState) -> None:
    """Load, check and warm up the model; on failure stay live but not ready, saying why."""
    # The process stays up without a usable model (live, not ready) so orchestrators see why.
    if not settings.model_path.is_file():
        state.reason = f"no model yet: {settings.model_path} does not exist"
        log.warning("%s; the service is live but not ready", state.reason)
        return
    try:
        predictor = await asyncio.to_thread(
            Predictor.load,
            settings.model_path,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            warmup=settings.warmup,
        )
        extractor = FeatureExtractor(predictor.contract.features)
        extractor.check_contract(predictor.contract)
        service = EmotionService(predictor, extractor, settings, state.metrics)
        if settings.warmup:
            await asyncio.to_thread(service.warmup)
    except ServiceError as exc:
        state.reason = f"model {settings.model_path} not usable: {exc.message}"
        log.error("%s; the service is live but not ready", state.reason)
        return
    await service.start()
    state.service = service
    state.ready, state.reason = True, "ready"
    state.metrics.ready.set(1)
    cfg = predictor.contract.features
    state.metrics.model_info.labels(
        name=predictor.model_name,
        version=predictor.model_version,
        provider=predictor.provider,
        feature_set=cfg.feature_set,
        sample_rate=str(cfg.sample_rate),
    ).set(1)
    log.info(
        "serving %s %s (%s) on %s: %d worker threads, batches of <= %d clips, queue <= %d",
        predictor.model_name,
        predictor.model_version,
        settings.model_path,
        predictor.provider,
        settings.pool_size,
        settings.max_batch,
        settings.max_queue,
    )
