"""``/v2``: the Open Inference Protocol (KServe v2) over raw features: server and model metadata, infer.

The health probes of the protocol (``/v2/health/*``) need no API key and live in :mod:`.ops`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app import __version__
from app.core.contract import INPUT_NAME, OUTPUT_NAME
from app.http.deps import NamedServiceDep
from app.http.openapi import INFER_BODY, error_responses
from app.http.schemas import (
    InferenceResponse,
    ModelMetadata,
    ModelReadyResponse,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

__all__ = ["SERVER_NAME", "TAG", "router"]

SERVER_NAME = "music-emotion-service"
#: The tag of every v2 route in the OpenAPI schema (health probes included).
TAG = "v2 (Open Inference Protocol)"

router = APIRouter(tags=[TAG])


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata", responses=error_responses(401))
async def server_metadata() -> ServerMetadata:
    """Name, version and supported protocol extensions (none)."""
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=[])


@router.get(
    "/v2/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata",
    responses=error_responses(401, 404, 422, 503),
)
async def model_metadata(service: NamedServiceDep) -> ModelMetadata:
    """Inputs `features` [-1, -1, F] and outputs `emotion` [-1, -1, 2], both FP32."""
    p = service.predictor
    return ModelMetadata(
        name=p.model_name,
        versions=[p.model_version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, -1, p.num_features])],
        outputs=[TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, -1, len(p.outputs)])],
    )


@router.get(
    "/v2/models/{name}/ready",
    response_model=ModelReadyResponse,
    summary="Model readiness",
    responses=error_responses(401, 404, 422, 503),
)
async def model_ready(service: NamedServiceDep) -> ModelReadyResponse:
    """Ready once loaded and warmed up."""
    return ModelReadyResponse(name=service.predictor.model_name, ready=True)


@router.post(
    "/v2/models/{name}/infer",
    response_model=InferenceResponse,
    summary="Inference on raw features",
    openapi_extra=INFER_BODY,
    responses=error_responses(401, 404, 413, 422, 503, 504),
)
async def infer(request: Request, service: NamedServiceDep) -> InferenceResponse:
    """One FP32 input `features`, shape [B, T, F], `data` flattened row-major; the `id` is echoed."""
    body = await request.body()
    result = await service.infer(body)
    y = result.emotion
    return InferenceResponse(
        model_name=service.predictor.model_name,
        model_version=service.predictor.model_version,
        id=result.request.id,
        outputs=[
            ResponseOutput(
                name=OUTPUT_NAME, shape=list(y.shape), datatype="FP32", data=y.reshape(-1).tolist()
            )
        ],
    )
