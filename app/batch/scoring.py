"""One track through the service's core path: decode → the one feature path → the predictor.

:class:`Scorer` is what both engines run per track. It applies the same limits as the HTTP route (the
duration and decoding budgets from :class:`~app.settings.Settings`, one analysis window at least) and
calls the same functions, so a track's frames here equal ``POST /v1/predict`` of the same file
(``tests/test_batch.py`` checks it). Failures are the core's typed errors; :func:`failure` turns any of
them into the record the errors file holds, with the API's error code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.batch.tracks import Track
from app.core.audio import decode
from app.core.contract import ModelContract
from app.core.emotion import summarise
from app.core.errors import InvalidRequestError, NotFoundError, ServiceError
from app.core.features import FeatureExtractor
from app.core.predictor import Predictor
from app.core.types import FloatArray

__all__ = ["Failure", "Limits", "Scored", "Scorer", "TrackExtractor", "failure"]


@dataclass(frozen=True)
class Limits:
    """The per-track bounds (the service's, from :class:`~app.settings.Settings`).

    Attributes:
        max_duration_s: Longest range analysed, seconds.
        max_decoded_samples: Most native samples one track may need decoded.
    """

    max_duration_s: float
    max_decoded_samples: int


@dataclass(frozen=True)
class Scored:
    """A scored track: the features' predictions and what the audio path did.

    Attributes:
        track: The input.
        emotion: ``(T, 2)`` float32 arousal and valence per frame.
        starts: ``(T,)`` frame start times in the file's time, seconds.
        analysed_s: Seconds of audio decoded.
        input_gain_db: Gain the level policy applied before extraction, dB.
    """

    track: Track
    emotion: FloatArray
    starts: np.ndarray[Any, np.dtype[np.float64]]
    analysed_s: float
    input_gain_db: float

    def row(self, model_name: str, model_version: str, sample_rate: int) -> dict[str, Any]:
        """The output row: ids, the model, the clip summary and the per-frame lists."""
        summary = summarise(self.emotion)
        return {
            "id": self.track.id,
            "path": self.track.path,
            "offset_s": self.track.offset_s,
            "duration_s": self.analysed_s,
            "model_name": model_name,
            "model_version": model_version,
            "sample_rate": sample_rate,
            "input_gain_db": self.input_gain_db,
            "num_frames": int(self.emotion.shape[0]),
            "arousal_mean": summary.mean["arousal"],
            "arousal_std": summary.std["arousal"],
            "valence_mean": summary.mean["valence"],
            "valence_std": summary.std["valence"],
            "quadrant": summary.quadrant,
            "start_s": self.starts.tolist(),
            "arousal": self.emotion[:, 0].tolist(),
            "valence": self.emotion[:, 1].tolist(),
        }


@dataclass(frozen=True)
class Failure:
    """A track that could not be scored, as the errors file records it.

    Attributes:
        id: The track's id.
        path: Its path.
        status: The HTTP status the API answers for this error.
        code: The API's error code (``corrupt_audio``, ``audio_too_long``, ``not_found``, ...).
        message: What went wrong.
    """

    id: str
    path: str
    status: int
    code: str
    message: str


def failure(track_id: str, path: str, exc: Exception) -> Failure:
    """The errors-file record of ``exc``; anything that is not a :class:`ServiceError` is ``internal``."""
    if isinstance(exc, ServiceError):
        return Failure(track_id, path, exc.status_code, exc.code, exc.message)
    return Failure(track_id, path, 500, "internal", f"{type(exc).__name__}: {exc}")


class TrackExtractor:
    """Decode and extract tracks for one model contract, within the limits (no model needed).

    Args:
        contract: The model's contract (its feature configuration is what is extracted).
        limits: Per-track bounds.

    Raises:
        ContractError: If this build cannot compute the contract's features.
    """

    def __init__(self, contract: ModelContract, limits: Limits) -> None:
        self.limits = limits
        self.extractor = FeatureExtractor(contract.features)
        self.extractor.check_contract(contract)
        self.config = self.extractor.config

    def extract(self, track: Track) -> tuple[FloatArray, float, float]:
        """Decode and extract one track: raw features, the level gain (dB) and the seconds analysed.

        Raises:
            ServiceError: ``not_found`` for a missing file, else the decode and limit errors of
                :func:`app.core.audio.decode`.
        """
        if not os.path.isfile(track.path):
            raise NotFoundError(f"no audio file at {track.path}")
        signal = decode(
            track.path,
            self.config.sample_rate,
            max_duration_s=self.limits.max_duration_s,
            max_decoded_samples=self.limits.max_decoded_samples,
            min_duration_s=self.config.window_s,
            offset_s=track.offset_s,
            duration_s=track.duration_s,
        )
        features = self.extractor.extract(signal)
        return features.values, features.gain_db, signal.size / self.config.sample_rate


class Scorer(TrackExtractor):
    """Score tracks with one model; thread-safe (openSMILE, libsndfile, soxr, ONNX Runtime are).

    Args:
        predictor: The loaded model.
        limits: Per-track bounds.

    Example:
        >>> scorer = Scorer(Predictor.load("models/default.onnx", intra_op_threads=1), limits)
        >>> scorer.score(Track(id="a", path="song.mp3")).emotion.shape
        (360, 2)
    """

    def __init__(self, predictor: Predictor, limits: Limits) -> None:
        super().__init__(predictor.contract, limits)
        self.predictor = predictor

    def finish(self, track: Track, features: FloatArray, gain_db: float, analysed_s: float) -> Scored:
        """Predict extracted features (the second half of :meth:`score`)."""
        emotion = self.predictor.predict(features)
        starts = track.offset_s + np.arange(emotion.shape[0], dtype=np.float64) * self.config.hop_s
        return Scored(track, emotion, starts, analysed_s, gain_db)

    def score(self, track: Track) -> Scored:
        """Decode, extract and predict one track.

        Raises:
            ServiceError: As :meth:`extract`; ``invalid_request`` for a bad offset or duration.
        """
        if track.duration_s is not None and track.duration_s <= 0:
            raise InvalidRequestError(f"duration_s must be > 0, got {track.duration_s}")
        return self.finish(track, *self.extract(track))
