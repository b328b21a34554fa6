"""The one settings object, read from ``MER_*`` environment variables once at start-up."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Where the shipped default model lives, relative to the repository / image root.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "default.onnx"


class Settings(BaseSettings):
    """Service configuration; every field can be set as ``MER_<FIELD>`` (e.g. ``MER_MODEL_PATH``).

    Read once in :func:`app.main.create_app` and passed down; nothing else reads the environment.
    """

    model_config = SettingsConfigDict(env_prefix="MER_", extra="ignore")

    model_path: Path = Field(
        default=DEFAULT_MODEL_PATH, description="ONNX model file with its contract in metadata."
    )
    max_upload_bytes: int = Field(
        default=100 * 1024 * 1024, gt=0, description="Largest accepted request body, in bytes."
    )
    max_inflight_body_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Most request-body bytes held at once, over all requests in progress; a body that "
        "does not fit gets 503 with Retry-After (default sized for the compose file's 2 GB limit).",
    )
    body_read_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest a request body may take to arrive (408 after that)."
    )
    max_duration_s: float = Field(
        default=900.0, gt=0, description="Longest accepted audio (or requested range), seconds."
    )
    max_decoded_samples: int = Field(
        default=900 * 96_000 * 2,
        gt=0,
        description="Most native samples (frames x channels, from the header) one upload may need decoded: "
        "bounds the work a small compressed file can demand (default: 15 min of 96 kHz stereo).",
    )
    providers: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="ONNX Runtime provider: 'auto' = CUDA if this onnxruntime build has it, else CPU; "
        "'cuda' fails instead of falling back to CPU.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per inference (0: all cores)."
    )
    inter_op_threads: int = Field(default=1, ge=0, description="ONNX Runtime inter-operator threads.")
    infer_slice_frames: int = Field(
        default=240,  # app.core.predictor.DEFAULT_SLICE_FRAMES (a test keeps the two equal)
        ge=0,
        description="Clips longer than this many frames run through the model's step graph in slices of "
        "this length (state carried across), so a long song's inference memory is that of this many "
        "frames; 0: always the whole clip at once.",
    )
    warmup: bool = Field(default=True, description="Run the model once at start-up before reporting ready.")
    pool_workers: int = Field(
        default=0, ge=0, description="Threads decoding audio and extracting features (0: one per core)."
    )
    max_batch: int = Field(default=16, ge=1, description="Most clips in one ONNX Runtime call.")
    max_extract_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Most seconds of audio extracted at once over all worker threads (openSMILE needs "
        "about 0.7 MB per second); more waits, a longer clip runs alone.",
    )
    max_batch_frames: int = Field(
        default=2048,
        ge=1,
        description="Most padded frames (clips x longest clip) in one ONNX Runtime call; a longer clip "
        "runs alone.",
    )
    max_wait_ms: float = Field(
        default=5.0, ge=0, description="How long a clip waits for others to share its inference batch."
    )
    max_queue: int = Field(
        default=64,
        ge=1,
        description="Most requests waiting for a worker thread, and most clips waiting for the model; "
        "beyond that requests get 503 with Retry-After at once.",
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest a request may take once its body has arrived (504)."
    )
    stream_max_concurrent: int = Field(
        default=8, ge=0, description="Most live streams (/v1/stream) at once; more are closed with 1013."
    )
    stream_idle_timeout_s: float = Field(
        default=10.0, gt=0, description="A live stream that sends nothing for this long is closed (1008)."
    )
    stream_max_duration_s: float = Field(
        default=3600.0,
        gt=0,
        description="Most seconds of audio one live stream may send; its wall time is bounded by this plus "
        "the idle timeout (1008 after that).",
    )
    stream_max_message_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest WebSocket message of a live stream (1009 above it)."
    )
    ui: bool = Field(
        default=True,
        description="Serve the page at / (upload a clip or stream the microphone, see the curves); "
        "false leaves / and /ui/* unrouted (404).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="If set, every route except health, /v2/health/* and /metrics needs "
        "'Authorization: Bearer <key>'.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated or a JSON list (empty: CORS off).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the service's own loggers."
    )
    log_json: bool = Field(default=False, description="Log one JSON object per line (for log collectors).")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # From the environment this is one string: accept "a,b" as well as '["a", "b"]'.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _budget_holds_one_body(self) -> Settings:
        # A body as large as allowed must fit the in-flight budget, or it could never be read.
        if self.max_inflight_body_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be at least "
                f"max_upload_bytes ({self.max_upload_bytes})"
            )
        return self

    @property
    def pool_size(self) -> int:
        """Worker threads for decoding and extraction: ``pool_workers``, or one per core."""
        # The cores this process may run on (a container's CPU set), not the host's count.
        return self.pool_workers or len(os.sched_getaffinity(0)) or 1
