"""Operations, open without an API key: liveness and readiness probes (OIP's ``/v2/health/*``), metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from app.http.deps import ServiceDep, StateDep
from app.http.openapi import error_responses
from app.http.routes.v2 import TAG as V2_TAG
from app.http.schemas import LiveResponse, ReadyResponse
from app.serving.metrics import CONTENT_TYPE

__all__ = ["router"]

router = APIRouter()


@router.get("/v2/health/live", tags=[V2_TAG], response_model=LiveResponse, summary="Liveness")
async def live() -> LiveResponse:
    """The process is up (also while the model is missing or loading)."""
    return LiveResponse(live=True)


@router.get(
    "/v2/health/ready",
    tags=[V2_TAG],
    response_model=ReadyResponse,
    summary="Readiness",
    responses=error_responses(503),
)
async def ready(_: ServiceDep) -> ReadyResponse:
    """The model is loaded and warmed up; otherwise 503 with the reason."""
    return ReadyResponse(ready=True)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    tags=["operations"],
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: StateDep) -> Response:
    """Requests, latencies per route and status, stage times, batch sizes, queues, model info."""
    return Response(content=state.metrics.render(), media_type=CONTENT_TYPE)
