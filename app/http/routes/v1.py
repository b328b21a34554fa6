"""HTTP routes: /v1 (audio and features → frames), /v2 (Open Inference Protocol), /metrics.

Routes parse (query parameters, raw body bytes), call :class:`~app.service.EmotionService`, and shape
the result into :mod:`app.schemas` models; nothing else happens here. Bodies are read as bytes (the
body limit has already been enforced by :class:`~app.middleware.BodyLimitMiddleware`) and parsed in
worker threads, so their schemas are documented through ``openapi_extra``.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.errors import InvalidRequestError, ModelNotReadyError, NotFoundError, ServiceError
from app.metrics import CONTENT_TYPE
from app.middleware import error_response
from app.payloads import NPY_MEDIA_TYPE
from app.predictor import INPUT_NAME, OUTPUT_NAME
from app.schemas import (
    AudioPredictionResponse,
    BatchFeaturesRequest,
    BatchFeaturesResponse,
    Emotion,
    ErrorResponse,
    FeatureFacts,
    FeaturesItemResponse,
    FeaturesRequest,
    FramesResponse,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelCard,
    ModelMetadata,
    ModelReadyResponse,
    ModelRef,
    ReadyResponse,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from app.schemas import Frame as FrameModel
from app.schemas import Summary as SummaryModel
from app.service import EmotionService, FramePrediction, ServiceState

__all__ = ["OPEN_PATHS", "SERVER_NAME", "add_routes", "handle_error", "install_openapi"]

log = logging.getLogger(__name__)

SERVER_NAME = "music-emotion-service"
#: Paths that need no API key: probes and scraping must work without the clients' secret.
OPEN_PATHS = (
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
)

# Module level: with postponed annotations, FastAPI resolves parameter types from the module's globals.
ModelName = Annotated[str, Path(description="The served model's name (see GET /v1/models/default).")]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}

# Request bodies documented here and parsed by app.payloads; their models join the schema components.
_BODY_MODELS: tuple[type[BaseModel], ...] = (FeaturesRequest, BatchFeaturesRequest, InferenceRequest)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "WAV, FLAC, OGG/Vorbis, Opus or MP3, 8–192 kHz, any channels.",
                        }
                    },
                    "required": ["file"],
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": "The audio file itself."}
            },
        },
    }
}
_FEATURES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [_ref(FeaturesRequest), _ref(BatchFeaturesRequest)]}},
            NPY_MEDIA_TYPE: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "A NumPy .npy file of one float32 (T, F) array (no pickles).",
                }
            },
        },
    }
}
_INFER_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(InferenceRequest)}}}
}

_ERROR_TEXT = {
    401: "Missing or wrong API key (only when one is configured).",
    404: "No such model.",
    413: "Body, audio duration or frame count over the configured limit.",
    415: "Unsupported audio format or Content-Type.",
    422: "Invalid request, audio or features (the message names the expected shape).",
    503: "Model not ready, overloaded (with Retry-After) or shutting down.",
    504: "The request took longer than the configured timeout.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


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
        body = {"error": {"code": _HTTP_CODES.get(exc.status_code, "http_error"), "message": str(exc.detail)}}
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)
    log.error("unhandled error", exc_info=exc)
    return error_response(ServiceError("internal error; the service log has the details"))


def add_routes(app: FastAPI, state: ServiceState, protect: bool) -> None:
    """Add every route to ``app``, bound to ``state`` (the loaded model and its service).

    Routes go on the app itself rather than through included routers, so each stays a plain route
    with its template: the metrics middleware matches requests against them before routing.

    Args:
        app: The application.
        state: The lifecycle state filled by the lifespan.
        protect: Whether an API key is configured (documents bearer auth on the protected routes; the
            check itself is :class:`~app.middleware.ApiKeyMiddleware`).
    """
    secured = (
        [Depends(HTTPBearer(auto_error=False, description="The configured API key."))] if protect else []
    )
    v1: list[str | Enum] = ["v1"]
    v2: list[str | Enum] = ["v2 (Open Inference Protocol)"]

    def service() -> EmotionService:
        if not state.ready or state.service is None:
            raise ModelNotReadyError(state.reason)
        return state.service

    def model_named(name: str) -> EmotionService:
        svc = service()
        if name != svc.predictor.model_name:
            raise NotFoundError(f"no model named {name!r}; this server serves {svc.predictor.model_name!r}")
        return svc

    # --- v1 -----------------------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        tags=v1,
        dependencies=secured,
        response_model=AudioPredictionResponse,
        summary="Arousal and valence per 500 ms frame of an audio file",
        openapi_extra=_AUDIO_BODY,
        responses=_errors(401, 413, 415, 422, 503, 504),
    )
    async def predict(
        request: Request,
        offset_s: Annotated[
            float, Query(ge=0, allow_inf_nan=False, description="Start of the range to analyse, seconds.")
        ] = 0.0,
        duration_s: Annotated[
            float | None,
            Query(gt=0, allow_inf_nan=False, description="Length of the range; only it is decoded."),
        ] = None,
    ) -> AudioPredictionResponse:
        """Upload one file (multipart field `file`, or the file as the body); get every frame's emotion.

        Frame *k* covers [offset_s + 0.5 k, offset_s + 0.5 k + 0.5) s of the file; a trailing partial
        frame is dropped. Example:
        `curl -F file=@song.mp3 'http://localhost:8000/v1/predict?offset_s=30&duration_s=30'`
        """
        svc = service()
        body = await request.body()
        result = await svc.predict_audio(
            body, request.headers.get("content-type"), offset_s=offset_s, duration_s=duration_s
        )
        return AudioPredictionResponse(
            **_frames(svc, result).model_dump(),
            input_gain_db=result.input_gain_db,
            offset_s=result.offset_s,
            analysed_s=result.analysed_s,
        )

    @app.post(
        "/v1/predict/features",
        tags=v1,
        dependencies=secured,
        response_model=FramesResponse | BatchFeaturesResponse,
        summary="Arousal and valence per frame of precomputed features",
        openapi_extra=_FEATURES_BODY,
        responses=_errors(401, 413, 415, 422, 503, 504),
    )
    async def predict_features(request: Request) -> FramesResponse | BatchFeaturesResponse:
        """Raw ComParE_2016 functionals (T, 6373) as JSON, a JSON batch of clips, or a float32 `.npy`.

        `.npy` (Content-Type `application/x-npy`) is about 3x smaller than JSON and parses without
        copying. The batch form answers `{"items": [...]}` with each clip's `id`.
        """
        svc = service()
        body = await request.body()
        results, batch = await svc.predict_features(body, request.headers.get("content-type"))
        if not batch:
            return _frames(svc, results[0])
        return BatchFeaturesResponse(
            items=[FeaturesItemResponse(**_frames(svc, r).model_dump(), id=_id(r)) for r in results]
        )

    @app.get(
        "/v1/models/default",
        tags=v1,
        dependencies=secured,
        response_model=ModelCard,
        summary="The served model: contract and model-card facts",
        responses=_errors(401, 503),
    )
    async def model_card() -> ModelCard:
        """Contract facts (features, rate, outputs), provider and the model file's metadata."""
        card = service().model_card()
        return ModelCard(**{**card, "features": FeatureFacts(**card["features"])})

    # --- v2: health and Open Inference Protocol -------------------------------------------------------

    @app.get("/v2/health/live", tags=v2, response_model=LiveResponse, summary="Liveness")
    async def live() -> LiveResponse:
        """The process is up (also while the model is missing or loading)."""
        return LiveResponse(live=True)

    @app.get(
        "/v2/health/ready", tags=v2, response_model=ReadyResponse, summary="Readiness", responses=_errors(503)
    )
    async def ready() -> ReadyResponse:
        """The model is loaded and warmed up; otherwise 503 with the reason."""
        service()
        return ReadyResponse(ready=True)

    @app.get(
        "/v2",
        tags=v2,
        dependencies=secured,
        response_model=ServerMetadata,
        summary="Server metadata",
        responses=_errors(401),
    )
    async def server_metadata() -> ServerMetadata:
        """Name, version and supported protocol extensions (none)."""
        return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=[])

    @app.get(
        "/v2/models/{name}",
        tags=v2,
        dependencies=secured,
        response_model=ModelMetadata,
        summary="Model metadata",
        responses=_errors(401, 404, 422, 503),
    )
    async def model_metadata(name: ModelName) -> ModelMetadata:
        """Inputs `features` [-1, -1, F] and outputs `emotion` [-1, -1, 2], both FP32."""
        svc = model_named(name)
        p = svc.predictor
        return ModelMetadata(
            name=p.model_name,
            versions=[p.model_version],
            platform="onnxruntime_onnx",
            inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, -1, p.num_features])],
            outputs=[TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, -1, len(p.outputs)])],
        )

    @app.get(
        "/v2/models/{name}/ready",
        tags=v2,
        dependencies=secured,
        response_model=ModelReadyResponse,
        summary="Model readiness",
        responses=_errors(401, 404, 422, 503),
    )
    async def model_ready(name: ModelName) -> ModelReadyResponse:
        """Ready once loaded and warmed up."""
        return ModelReadyResponse(name=model_named(name).predictor.model_name, ready=True)

    @app.post(
        "/v2/models/{name}/infer",
        tags=v2,
        dependencies=secured,
        response_model=InferenceResponse,
        summary="Inference on raw features",
        openapi_extra=_INFER_BODY,
        responses=_errors(401, 404, 413, 422, 503, 504),
    )
    async def infer(name: ModelName, request: Request) -> InferenceResponse:
        """One FP32 input `features`, shape [B, T, F], `data` flattened row-major; the `id` is echoed."""
        svc = model_named(name)
        body = await request.body()
        result = await svc.infer(body)
        y = result.emotion
        return InferenceResponse(
            model_name=svc.predictor.model_name,
            model_version=svc.predictor.model_version,
            id=result.request.id,
            outputs=[
                ResponseOutput(
                    name=OUTPUT_NAME, shape=list(y.shape), datatype="FP32", data=y.reshape(-1).tolist()
                )
            ],
        )

    # --- metrics --------------------------------------------------------------------------------------

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        tags=["operations"],
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Requests, latencies per route and status, stage times, batch sizes, queues, model info."""
        return Response(content=state.metrics.render(), media_type=CONTENT_TYPE)


def _frames(svc: EmotionService, result: FramePrediction) -> FramesResponse:
    p, cfg = svc.predictor, svc.config
    summary = result.summary
    frames = [
        FrameModel(index=i, start_s=s, end_s=e, arousal=a, valence=v)
        for i, (s, e, (a, v)) in enumerate(
            zip(result.starts.tolist(), result.ends.tolist(), result.emotion.tolist(), strict=True)
        )
    ]
    return FramesResponse(
        model=ModelRef(name=p.model_name, version=p.model_version),
        sample_rate=cfg.sample_rate,
        hop_s=cfg.hop_s,
        window_s=cfg.window_s,
        num_frames=len(frames),
        frames=frames,
        summary=SummaryModel(
            mean=Emotion(**summary.mean),
            std=Emotion(**summary.std),
            quadrant=summary.quadrant,
            quadrant_label=summary.quadrant_label,
        ),
    )


def _id(result: FramePrediction) -> str | int:
    return result.id if result.id is not None else ""


def install_openapi(app: FastAPI) -> None:
    """Add the models of the self-parsed request bodies to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODY_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    setattr(app, "openapi", openapi)  # noqa: B010 - FastAPI's documented way to customise the schema
