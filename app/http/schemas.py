"""Pydantic models of the HTTP API: v1 frames, Open Inference Protocol v2 tensors, errors.

Request models of the routes that read their bodies themselves (uploads, feature arrays, tensors;
parsed in worker threads by :mod:`app.serving.payloads`) document those bodies in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from app.core.contract import NUM_COMPARE_FEATURES

# --- errors ---------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """What went wrong."""

    code: str = Field(description="Stable, machine-readable error code.", examples=["audio_too_long"])
    message: str = Field(
        description="Human-readable explanation.", examples=["audio lasts 1200.0 s; the limit is 900 s"]
    )


class ErrorResponse(BaseModel):
    """The one error shape of every route."""

    error: ErrorBody


# --- v1 -------------------------------------------------------------------------------------------------


class ModelRef(BaseModel):
    """Which model answered."""

    name: str = Field(examples=["mer-lstm-at-400"])
    version: str = Field(examples=["2.0.0"])


class Frame(BaseModel):
    """Emotion of one 500 ms frame."""

    index: int = Field(ge=0, description="Frame number k; the frame covers [start_s, end_s).")
    start_s: float = Field(description="Start of the frame in the file, seconds (offset included).")
    end_s: float = Field(description="End of the frame, seconds.")
    arousal: float = Field(ge=-1, le=1, description="Arousal in [-1, 1].")
    valence: float = Field(ge=-1, le=1, description="Valence in [-1, 1].")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"index": 0, "start_s": 0.0, "end_s": 0.5, "arousal": 0.21, "valence": -0.05}]
        }
    )


class Emotion(BaseModel):
    """Arousal and valence."""

    arousal: float
    valence: float


class Summary(BaseModel):
    """Clip-level summary of the frames."""

    mean: Emotion = Field(description="Mean over the frames.")
    std: Emotion = Field(description="Population standard deviation over the frames.")
    quadrant: Literal["Q1", "Q2", "Q3", "Q4"] = Field(
        description="Circumplex quadrant of the mean: Q1 +A+V, Q2 +A-V, Q3 -A-V, Q4 -A+V (0 counts as +)."
    )
    quadrant_label: str = Field(examples=["high arousal, positive valence (e.g. happy, excited)"])


class FramesResponse(BaseModel):
    """Per-frame arousal/valence of one clip."""

    model: ModelRef
    sample_rate: int = Field(description="Analysis sample rate of the features, Hz.", examples=[16000])
    hop_s: float = Field(description="Seconds between frame starts.", examples=[0.5])
    window_s: float = Field(description="Seconds each frame covers.", examples=[0.5])
    num_frames: int = Field(ge=1)
    frames: list[Frame]
    summary: Summary

    # "model" is a field name here, not pydantic's namespace.
    model_config = ConfigDict(protected_namespaces=())


class AudioPredictionResponse(FramesResponse):
    """Per-frame arousal/valence of an uploaded clip."""

    input_gain_db: float = Field(
        description="Gain the level policy applied to the clip before feature extraction, dB "
        "(the clip is scaled to -23 dBFS gated RMS).",
        examples=[4.2],
    )
    offset_s: float = Field(ge=0, description="Start of the analysed range in the file, seconds.")
    analysed_s: float = Field(ge=0, description="Seconds of audio analysed (frames cover whole 0.5 s).")

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "mer-lstm-at-400", "version": "2.0.0"},
                    "sample_rate": 16000,
                    "hop_s": 0.5,
                    "window_s": 0.5,
                    "num_frames": 2,
                    "frames": [
                        {"index": 0, "start_s": 0.0, "end_s": 0.5, "arousal": 0.21, "valence": -0.05},
                        {"index": 1, "start_s": 0.5, "end_s": 1.0, "arousal": 0.25, "valence": -0.02},
                    ],
                    "summary": {
                        "mean": {"arousal": 0.23, "valence": -0.035},
                        "std": {"arousal": 0.02, "valence": 0.015},
                        "quadrant": "Q2",
                        "quadrant_label": "high arousal, negative valence (e.g. angry, tense)",
                    },
                    "input_gain_db": 4.2,
                    "offset_s": 0.0,
                    "analysed_s": 1.02,
                }
            ]
        },
    )


#: The largest finite float32: the features are float32 for the model, so larger values are refused.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: A feature value: any number float32 can hold.
Float32 = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
#: One frame of raw features: exactly F values (what the served contract's feature set computes).
FeatureRow = Annotated[list[Float32], Field(min_length=NUM_COMPARE_FEATURES, max_length=NUM_COMPARE_FEATURES)]


class FeaturesRequest(BaseModel):
    """One clip of raw ComParE_2016 functionals, one row of F (6373) values per 500 ms frame."""

    features: list[FeatureRow] = Field(min_length=1, description="(T, F) raw features, T >= 1.")


class FeaturesItem(BaseModel):
    """One clip of a batch."""

    id: str | int = Field(description="The client's id, echoed in the response.")
    features: list[FeatureRow] = Field(min_length=1, description="(T, F) raw features, T >= 1.")


class BatchFeaturesRequest(BaseModel):
    """Several clips in one request (each may have its own length)."""

    items: list[FeaturesItem] = Field(min_length=1)


class FeaturesItemResponse(FramesResponse):
    """Per-frame arousal/valence of one clip of a batch."""

    id: str | int


class BatchFeaturesResponse(BaseModel):
    """One result per clip, in request order."""

    items: list[FeaturesItemResponse]


class FeatureFacts(BaseModel):
    """How the model's input features are computed."""

    feature_set: str
    feature_level: str
    sample_rate: int
    hop_s: float
    window_s: float


class StepGraphFacts(BaseModel):
    """The step graph live streams (and long clips, in slices) run on."""

    file: str = Field(description="Its file, beside the model.")
    parity: float = Field(description="Max |step - sequence| measured when it was exported.")
    state: list[str] = Field(description="Names of the state it carries from frame to frame.")
    slices: bool = Field(description="Whether it takes slices of frames (else one frame per call).")
    slice_frames: int = Field(
        description="Clips longer than this many frames run through it in slices of this length, their "
        "state carried across, so their memory stays bounded (0: never; MER_INFER_SLICE_FRAMES)."
    )


class ModelCard(BaseModel):
    """The served model: contract facts and the model file's metadata (its arrays left out)."""

    name: str
    version: str
    path: str
    provider: str = Field(description="ONNX Runtime execution provider in use.")
    ready: bool
    num_features: int
    outputs: list[str]
    output_range: list[float]
    features: FeatureFacts
    metadata: dict[str, Any] = Field(
        description="The ONNX metadata_props (mer.*), JSON values decoded; normalisation arrays omitted."
    )
    step_model: StepGraphFacts | None = Field(
        default=None, description="The step graph /v1/stream runs on; null: live streams are unavailable."
    )
    step_model_problem: str | None = Field(
        default=None, description="Why the step graph the model names is not loaded (its file is missing)."
    )


# --- health and Open Inference Protocol v2 --------------------------------------------------------------


class LiveResponse(BaseModel):
    """Liveness."""

    live: bool


class ReadyResponse(BaseModel):
    """Readiness."""

    ready: bool


class ServerMetadata(BaseModel):
    """Open Inference Protocol server metadata."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    """Name, type and shape (-1: any size) of a tensor."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """Open Inference Protocol model metadata."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReadyResponse(BaseModel):
    """Open Inference Protocol model readiness."""

    name: str
    ready: bool


class RequestInput(BaseModel):
    """An input tensor: ``data`` holds prod(shape) numbers in row-major order."""

    name: Literal["features"]
    # Literal needs the number itself: NUM_COMPARE_FEATURES (tests/test_schema.py checks they agree).
    shape: tuple[PositiveInt, PositiveInt, Literal[6373]] = Field(description="[B, T, F] with F = 6373.")
    datatype: Literal["FP32"]
    data: list[Float32] = Field(
        min_length=NUM_COMPARE_FEATURES, description="B * T * F numbers (at least one frame), row-major."
    )
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    """A requested output."""

    name: str


class InferenceRequest(BaseModel):
    """Open Inference Protocol v2 inference request with one input, ``features``."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """An output tensor, flattened row-major."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceResponse(BaseModel):
    """Open Inference Protocol v2 inference response."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]

    model_config = ConfigDict(protected_namespaces=())
