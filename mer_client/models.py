"""Typed results: what ``/v1/predict``, ``/v1/predict/features`` and ``/v1/models/default`` answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Emotion", "Frame", "ModelInfo", "Prediction", "Summary"]


@dataclass(frozen=True)
class Emotion:
    """Arousal and valence, each in [-1, 1]."""

    arousal: float
    valence: float


@dataclass(frozen=True)
class Frame:
    """One 500 ms frame: it covers ``[start_s, end_s)`` of the file."""

    index: int
    start_s: float
    end_s: float
    arousal: float
    valence: float


@dataclass(frozen=True)
class Summary:
    """The clip: mean and spread of the frames, and the circumplex quadrant of the mean."""

    mean: Emotion
    std: Emotion
    quadrant: str
    quadrant_label: str


@dataclass(frozen=True)
class Prediction:
    """Per-frame emotion of one clip.

    Attributes:
        model_name: The model that answered.
        model_version: Its version.
        sample_rate: Analysis rate of the features, Hz.
        hop_s: Seconds between frame starts.
        window_s: Seconds each frame covers.
        frames: Every frame, in order.
        summary: The clip summary.
        input_gain_db: Level gain applied before extraction (audio requests only).
        offset_s: Start of the analysed range (audio requests only).
        analysed_s: Seconds of audio analysed (audio requests only).
        id: The clip's id in a batch of features.
    """

    model_name: str
    model_version: str
    sample_rate: int
    hop_s: float
    window_s: float
    frames: list[Frame]
    summary: Summary
    input_gain_db: float | None = None
    offset_s: float | None = None
    analysed_s: float | None = None
    id: str | int | None = None

    @property
    def arousal(self) -> list[float]:
        """Arousal per frame."""
        return [f.arousal for f in self.frames]

    @property
    def valence(self) -> list[float]:
        """Valence per frame."""
        return [f.valence for f in self.frames]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Prediction:
        """Parse the service's response body."""
        summary = body["summary"]
        return cls(
            model_name=body["model"]["name"],
            model_version=body["model"]["version"],
            sample_rate=int(body["sample_rate"]),
            hop_s=float(body["hop_s"]),
            window_s=float(body["window_s"]),
            frames=[Frame(**f) for f in body["frames"]],
            summary=Summary(
                mean=Emotion(**summary["mean"]),
                std=Emotion(**summary["std"]),
                quadrant=summary["quadrant"],
                quadrant_label=summary["quadrant_label"],
            ),
            input_gain_db=body.get("input_gain_db"),
            offset_s=body.get("offset_s"),
            analysed_s=body.get("analysed_s"),
            id=body.get("id"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """The served model.

    Attributes:
        name: Model name.
        version: Model version.
        provider: ONNX Runtime execution provider.
        num_features: Input width (6373).
        outputs: Output names (``arousal``, ``valence``).
        sample_rate: Analysis rate, Hz.
        hop_s: Seconds between frames.
        metadata: The model file's metadata (card, metrics, training facts).
    """

    name: str
    version: str
    provider: str
    num_features: int
    outputs: list[str]
    sample_rate: int
    hop_s: float
    metadata: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        """Parse ``/v1/models/default``."""
        return cls(
            name=body["name"],
            version=body["version"],
            provider=body["provider"],
            num_features=int(body["num_features"]),
            outputs=list(body["outputs"]),
            sample_rate=int(body["features"]["sample_rate"]),
            hop_s=float(body["features"]["hop_s"]),
            metadata=dict(body.get("metadata") or {}),
        )
