"""The one settings object, read from ``MER_*`` environment variables once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    max_duration_s: float = Field(
        default=900.0, gt=0, description="Longest accepted audio (or requested range), seconds."
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
    warmup: bool = Field(default=True, description="Run the model once at start-up before reporting ready.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the service's own loggers."
    )
