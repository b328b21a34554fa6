"""``/v1``: an audio file or precomputed features in, arousal and valence per 500 ms frame out.

Bodies are read as bytes (the body limit has already been enforced by
:class:`~app.http.middleware.BodyLimitMiddleware`) and parsed in worker threads by the service, so
their schemas are documented through ``openapi_extra`` (:mod:`app.http.openapi`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.http.deps import ServiceDep
from app.http.openapi import AUDIO_BODY, FEATURES_BODY, error_responses
from app.http.schemas import (
    AudioPredictionResponse,
    BatchFeaturesResponse,
    Emotion,
    FeatureFacts,
    FeaturesItemResponse,
    Frame,
    FramesResponse,
    ModelCard,
    ModelRef,
    StepGraphFacts,
    Summary,
)
from app.serving.service import EmotionService, FramePrediction

__all__ = ["router"]

router = APIRouter(tags=["v1"])


@router.post(
    "/v1/predict",
    response_model=AudioPredictionResponse,
    summary="Arousal and valence per 500 ms frame of an audio file",
    openapi_extra=AUDIO_BODY,
    responses=error_responses(401, 413, 415, 422, 503, 504),
)
async def predict(
    request: Request,
    service: ServiceDep,
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
    body = await request.body()
    result = await service.predict_audio(
        body, request.headers.get("content-type"), offset_s=offset_s, duration_s=duration_s
    )
    return AudioPredictionResponse(
        **frames_response(service, result).model_dump(),
        input_gain_db=result.input_gain_db,
        offset_s=result.offset_s,
        analysed_s=result.analysed_s,
    )


@router.post(
    "/v1/predict/features",
    response_model=FramesResponse | BatchFeaturesResponse,
    summary="Arousal and valence per frame of precomputed features",
    openapi_extra=FEATURES_BODY,
    responses=error_responses(401, 413, 415, 422, 503, 504),
)
async def predict_features(request: Request, service: ServiceDep) -> FramesResponse | BatchFeaturesResponse:
    """Raw ComParE_2016 functionals (T, 6373) as JSON, a JSON batch of clips, or a float32 `.npy`.

    `.npy` (Content-Type `application/x-npy`) is about 3x smaller than JSON and parses without
    copying. The batch form answers `{"items": [...]}` with each clip's `id`.
    """
    body = await request.body()
    results, batch = await service.predict_features(body, request.headers.get("content-type"))
    if not batch:
        return frames_response(service, results[0])
    return BatchFeaturesResponse(
        items=[
            FeaturesItemResponse(
                **frames_response(service, r).model_dump(), id=r.id if r.id is not None else ""
            )
            for r in results
        ]
    )


@router.get(
    "/v1/models/default",
    response_model=ModelCard,
    summary="The served model: contract and model-card facts",
    responses=error_responses(401, 503),
)
async def model_card(service: ServiceDep) -> ModelCard:
    """Contract facts (features, rate, outputs), provider and the model file's metadata."""
    card = service.model_card()
    step = card.get("step_model")
    return ModelCard(
        **{
            **card,
            "features": FeatureFacts(**card["features"]),
            "step_model": None if step is None else StepGraphFacts(**step),
        }
    )


def frames_response(service: EmotionService, result: FramePrediction) -> FramesResponse:
    """Shape one clip's prediction: its frames with times, the model, the grid and the summary."""
    p, cfg = service.predictor, service.config
    summary = result.summary
    frames = [
        Frame(index=i, start_s=s, end_s=e, arousal=a, valence=v)
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
        summary=Summary(
            mean=Emotion(**summary.mean),
            std=Emotion(**summary.std),
            quadrant=summary.quadrant,
            quadrant_label=summary.quadrant_label,
        ),
    )
