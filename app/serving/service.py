"""The service's work, without HTTP: bytes in, per-frame emotion out, one request at a time.

:class:`EmotionService` owns the worker pool (decoding, extraction, parsing of large bodies) and the
dynamic batcher in front of the model, applies the limits from :class:`~app.settings.Settings`
(duration, frames, queue sizes, request timeout) and records stage metrics. Routes call one method per
request and shape its result; every failure is a :class:`~app.core.errors.ServiceError`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.audio import decode
from app.core.contract import ARRAY_TAG, INPUT_NAME, OUTPUT_NAME, OUTPUTS
from app.core.emotion import EmotionSummary, summarise
from app.core.errors import ContractError, InvalidRequestError, RequestTimeoutError, TooManyFramesError
from app.core.features import FeatureExtractor
from app.core.predictor import Predictor
from app.core.types import Float64Array, FloatArray
from app.serving.batcher import DynamicBatcher
from app.serving.memory import TRIM_AFTER_S, release_memory
from app.serving.metrics import ServiceMetrics
from app.serving.payloads import TensorPayload, audio_from_body, features_from_body, tensor_from_json
from app.serving.pool import AudioBudget, WorkerPool
from app.serving.stream import StreamHub
from app.settings import Settings

__all__ = [
    "AudioPrediction",
    "EmotionService",
    "FramePrediction",
    "TensorPrediction",
]


@dataclass(frozen=True)
class FramePrediction:
    """Per-frame emotion of one clip.

    Attributes:
        emotion: ``(T, 2)`` arousal and valence per frame.
        starts: ``(T,)`` frame start times, seconds.
        ends: ``(T,)`` frame end times, seconds.
        id: The client's id for this clip (batch requests only).
    """

    emotion: FloatArray
    starts: Float64Array
    ends: Float64Array
    id: str | int | None = None

    @property
    def summary(self) -> EmotionSummary:
        """Clip-level summary."""
        return summarise(self.emotion)


@dataclass(frozen=True)
class AudioPrediction(FramePrediction):
    """Per-frame emotion of an uploaded clip, with what the audio path did.

    Attributes:
        input_gain_db: Gain the feature path's level policy applied before extraction, dB.
        offset_s: Start of the analysed range in the file, seconds (frame times include it).
        analysed_s: Seconds of audio decoded.
    """

    input_gain_db: float = 0.0
    offset_s: float = 0.0
    analysed_s: float = 0.0


@dataclass(frozen=True)
class TensorPrediction:
    """The result of an Open Inference Protocol request.

    Attributes:
        request: The parsed request (its id is echoed).
        emotion: ``(B, T, O)`` outputs.
    """

    request: TensorPayload
    emotion: FloatArray


class EmotionService:
    """Decode, extract, batch and predict, within the configured limits.

    Args:
        predictor: A loaded model.
        extractor: The feature extractor for the model's contract (already checked against it).
        settings: Pool size, batching, limits and timeout.
        metrics: Where stage, batch and queue metrics go.

    Raises:
        ContractError: If the model's outputs are not ``("arousal", "valence")``.

    Example:
        >>> service = EmotionService(predictor, extractor, settings, metrics)
        >>> await service.start()
        >>> result = await service.predict_audio(wav_bytes, "audio/wav")
        >>> await service.stop()
    """

    def __init__(
        self, predictor: Predictor, extractor: FeatureExtractor, settings: Settings, metrics: ServiceMetrics
    ) -> None:
        if tuple(predictor.outputs) != OUTPUTS:
            raise ContractError(
                f"the service reports {list(OUTPUTS)}; this model's outputs are {list(predictor.outputs)}"
            )
        self.predictor = predictor
        self.extractor = extractor
        self.settings = settings
        self.metrics = metrics
        self.config = extractor.config
        #: Longest clip accepted as precomputed features, in frames (the duration limit on the grid).
        self.max_frames = max(1, math.floor(settings.max_duration_s / self.config.hop_s))
        self.pool = WorkerPool(settings.pool_size, settings.max_queue)
        self.audio_budget = AudioBudget(settings.max_extract_seconds)
        self.batcher = DynamicBatcher(
            predictor.predict_batch,
            max_batch=settings.max_batch,
            max_batch_frames=settings.max_batch_frames,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            observe=metrics.observe_batch,
        )
        metrics.track_queues(lambda: self.pool.waiting, lambda: self.batcher.queued)
        #: Live streams (/v1/stream) through the model's step graph.
        self.streams = StreamHub(
            predictor.step, extractor, settings, metrics, step_problem=predictor.step_problem
        )

    async def start(self) -> None:
        """Start the batcher."""
        await self.batcher.start()

    async def stop(self) -> None:
        """Finish queued inference, then stop the batcher and the worker threads."""
        await self.batcher.stop()
        await self.pool.shutdown()

    def warmup(self) -> None:
        """Extract features once (one frame of silence), so the first request does not pay set-up."""
        self.extractor.extract(np.zeros(self.config.window_samples, dtype=np.float32))

    # --- requests -----------------------------------------------------------------------------------

    async def predict_audio(
        self,
        body: bytes,
        content_type: str | None,
        *,
        offset_s: float = 0.0,
        duration_s: float | None = None,
    ) -> AudioPrediction:
        """Predict every frame of an uploaded audio file (or of a time range of it).

        Args:
            body: The request body: multipart with a ``file`` field, or the file itself.
            content_type: The body's Content-Type.
            offset_s: Start of the range to analyse, seconds.
            duration_s: Length of the range (``None``: to the end); only that range is decoded.

        Returns:
            Per-frame arousal/valence, frame times in the file's time (offset included), the gain.

        Raises:
            ServiceError: Any of the audio, limit, queue and timeout errors of :mod:`app.core.errors`.
        """
        async with self._deadline():
            values, gain_db, analysed_s = await self.pool.run(
                self._decode_and_extract, body, content_type, offset_s, duration_s
            )
            (emotion,) = await self.batcher.submit([values])
        if analysed_s >= TRIM_AFTER_S:
            release_memory()  # after the long clip's inference too (ONNX Runtime frees, glibc keeps)
        t = emotion.shape[0]
        starts = offset_s + np.arange(t, dtype=np.float64) * self.config.hop_s
        return AudioPrediction(
            emotion=emotion,
            starts=starts,
            ends=starts + self.config.window_s,
            input_gain_db=gain_db,
            offset_s=offset_s,
            analysed_s=analysed_s,
        )

    async def predict_features(
        self, body: bytes, content_type: str | None
    ) -> tuple[list[FramePrediction], bool]:
        """Predict precomputed raw features (JSON, a JSON batch, or ``.npy``).

        Returns:
            One prediction per clip, and whether the request was the batch form.

        Raises:
            ServiceError: Invalid bodies or features (422, with the expected shape), too many frames
                (413), queue and timeout errors.
        """
        async with self._deadline():
            clips, ids = await self.pool.run(self._parse_features, body, content_type)
            outputs = await self.batcher.submit(clips)
        predictions = []
        for i, y in enumerate(outputs):
            starts = np.arange(y.shape[0], dtype=np.float64) * self.config.hop_s
            ident = None if ids is None else ids[i]
            predictions.append(FramePrediction(y, starts, starts + self.config.window_s, ident))
        return predictions, ids is not None

    async def infer(self, body: bytes) -> TensorPrediction:
        """Run an Open Inference Protocol v2 request: ``features`` ``[B, T, F]`` FP32 in, ``emotion`` out.

        Raises:
            ServiceError: Malformed requests, wrong names or shapes, non-finite values (422), too many
                frames (413), queue and timeout errors.
        """
        async with self._deadline():
            request, clips = await self.pool.run(self._parse_tensor, body)
            outputs = await self.batcher.submit(clips)
        return TensorPrediction(request=request, emotion=np.stack(outputs))

    # --- model facts --------------------------------------------------------------------------------

    def model_card(self) -> dict[str, Any]:
        """:meth:`Predictor.info` plus the model file's metadata that is not an array.

        JSON-valued metadata (training config, metrics, versions) is decoded; the normalisation
        statistics are left out.
        """
        metadata: dict[str, Any] = {}
        for key, value in sorted(self.predictor.metadata.items()):
            if value.startswith(ARRAY_TAG):  # normalisation statistics, not card facts
                continue
            try:
                metadata[key] = json.loads(value)
            except ValueError:
                metadata[key] = value
        return {**self.predictor.info(), "metadata": metadata}

    # --- work done in the pool ----------------------------------------------------------------------

    def _decode_and_extract(
        self, body: bytes, content_type: str | None, offset_s: float, duration_s: float | None
    ) -> tuple[FloatArray, float, float]:
        data = audio_from_body(body, content_type)
        start = time.perf_counter()
        signal = decode(
            data,
            self.config.sample_rate,
            max_duration_s=self.settings.max_duration_s,
            max_decoded_samples=self.settings.max_decoded_samples,
            min_duration_s=self.config.window_s,
            offset_s=offset_s,
            duration_s=duration_s,
        )
        decoded = time.perf_counter()
        self.metrics.stage_seconds.labels(stage="decode").observe(decoded - start)
        seconds = signal.size / self.config.sample_rate
        with self.audio_budget.hold(seconds):
            started = time.perf_counter()
            features = self.extractor.extract(signal, runner=self.pool.chunk_runner())
        self.metrics.stage_seconds.labels(stage="extract").observe(time.perf_counter() - started)
        if seconds >= TRIM_AFTER_S:
            release_memory()
        return features.values, features.gain_db, seconds

    def _parse_features(
        self, body: bytes, content_type: str | None
    ) -> tuple[list[FloatArray], list[str | int] | None]:
        payload = features_from_body(body, content_type)
        clips = [
            self._check_clip(c, i if payload.ids is not None else None) for i, c in enumerate(payload.clips)
        ]
        return clips, payload.ids

    def _parse_tensor(self, body: bytes) -> tuple[TensorPayload, list[FloatArray]]:
        request = tensor_from_json(body)
        f = self.predictor.num_features
        expected = f"expected input {INPUT_NAME!r}, FP32, shape [B, T, {f}] with B, T >= 1"
        if request.name != INPUT_NAME:
            raise InvalidRequestError(f"{expected}; got input {request.name!r}")
        if request.outputs is not None and any(name != OUTPUT_NAME for name in request.outputs):
            raise InvalidRequestError(
                f"this model has one output, {OUTPUT_NAME!r}; requested {request.outputs}"
            )
        shape = request.shape
        if len(shape) != 3 or shape[0] < 1 or shape[1] < 1 or shape[2] != f:
            raise InvalidRequestError(f"{expected}; got shape {list(shape)}")
        batch = request.data.reshape(shape)
        clips = [self._check_clip(batch[i], i if shape[0] > 1 else None) for i in range(shape[0])]
        return request, clips

    def _check_clip(self, clip: Any, index: int | None) -> FloatArray:
        x = self.predictor.validate(clip, index=index)
        if x.shape[0] > self.max_frames:
            where = "" if index is None else f"clip {index}: "
            raise TooManyFramesError(
                f"{where}{x.shape[0]} frames; at most {self.max_frames} "
                f"({self.settings.max_duration_s:g} s at {self.config.hop_s} s per frame) are accepted"
            )
        return x

    @asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        timeout = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError as exc:
            raise RequestTimeoutError(f"the request took longer than the {timeout:g} s limit") from exc
