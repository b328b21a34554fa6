"""Service entry point: ``create_app(settings)`` builds the FastAPI application.

Run with ``uvicorn --factory app.main:create_app``. Settings are read here, once, and passed down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.errors import ModelNotReadyError, ServiceError
from app.features import FeatureExtractor
from app.predictor import Predictor
from app.settings import Settings

log = logging.getLogger("app")


@dataclass
class ServiceState:
    """What the routes need to know about the loaded model."""

    ready: bool = False
    reason: str = "starting"
    predictor: Predictor | None = None
    extractor: FeatureExtractor | None = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: Configuration; read from the environment when omitted.

    Returns:
        The FastAPI app, with the model loaded in its lifespan.
    """
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper())
    state = ServiceState()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The process stays up without a usable model (live, not ready) so orchestrators see why.
        if not settings.model_path.is_file():
            state.reason = f"no model yet: {settings.model_path} does not exist"
            log.warning("%s; the service is live but not ready", state.reason)
        else:
            try:
                predictor = Predictor.load(
                    settings.model_path,
                    providers=settings.providers,
                    intra_op_threads=settings.intra_op_threads,
                    inter_op_threads=settings.inter_op_threads,
                    warmup=settings.warmup,
                )
                extractor = FeatureExtractor(predictor.contract.features)
                extractor.check_contract(predictor.contract)
            except ServiceError as exc:
                state.reason = f"model {settings.model_path} not usable: {exc.message}"
                log.error("%s; the service is live but not ready", state.reason)
            else:
                state.predictor, state.extractor = predictor, extractor
                state.ready, state.reason = True, "ready"
                log.info(
                    "serving %s (%s) on %s", predictor.model_name, settings.model_path, predictor.provider
                )
        yield

    app = FastAPI(title="Music emotion recognition", version=__version__, lifespan=lifespan)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.to_dict())

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        """Liveness: the process is up."""
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        """Readiness: a model is loaded and warmed up."""
        if not state.ready:
            raise ModelNotReadyError(state.reason)
        return {"ready": True}

    return app
