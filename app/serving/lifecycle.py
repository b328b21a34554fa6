"""The service's lifecycle: load, check and warm up the model, then serve until shutdown.

:class:`ServiceState` is what the HTTP edge reads (readiness, the reason when not ready, the running
:class:`~app.serving.service.EmotionService`); :func:`start` and :func:`stop` are what the application's
lifespan calls. A model that is missing or cannot be served leaves the process live but not ready,
with the reason, so orchestrators see why instead of a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.core.errors import ServiceError
from app.core.features import FeatureExtractor
from app.core.predictor import Predictor
from app.serving.metrics import ServiceMetrics
from app.serving.service import EmotionService
from app.settings import Settings

__all__ = ["ServiceState", "start", "stop"]

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    """The lifecycle as the routes see it: filled by :func:`start`, emptied by :func:`stop`.

    Attributes:
        metrics: The app's metrics (there from the start, so /metrics works before the model loads).
        ready: True once the model is loaded and warmed up, until shutdown begins.
        reason: Why the service is not ready (reported by the readiness probe).
        service: The running service, once the model is loaded.
    """

    metrics: ServiceMetrics
    ready: bool = False
    reason: str = "starting"
    service: EmotionService | None = None


async def start(settings: Settings, state: ServiceState) -> None:
    """Load, check and warm up the model; on failure stay live but not ready, saying why."""
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
            slice_frames=settings.infer_slice_frames,
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


async def stop(state: ServiceState) -> None:
    """Report not ready, then drain the queues and join the worker threads."""
    # The server has let the in-flight requests finish before it gets here; stopping the service
    # still drains whatever sits in the queues before the threads go.
    state.ready, state.reason = False, "shutting down"
    state.metrics.ready.set(0)
    if state.service is not None:
        await state.service.stop()
        log.info("stopped: queues drained, worker threads joined")
