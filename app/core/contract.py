"""The model's I/O contract, and the project's vocabulary: everything serving needs to reproduce training.

The names every layer shares are defined here once: the graph's tensor names (:data:`INPUT_NAME`,
:data:`OUTPUT_NAME`), the outputs and their scale (:data:`OUTPUTS`, :data:`OUTPUT_RANGE`), the feature
width (:data:`NUM_COMPARE_FEATURES`) and the frame grid (:data:`HOP_S`, :data:`WINDOW_S`).

A :class:`FeatureConfig` says how features are computed (feature set, analysis rate, windows, frame
policy); a :class:`ModelContract` adds what a trained model expects of them (feature count and the hash
of their ordered names, the openSMILE version, the standardisation statistics) and what it returns
(output names and their scale). The contract travels inside the ONNX file as ``metadata_props``
strings (:meth:`ModelContract.to_metadata` / :meth:`ModelContract.from_metadata`, lossless), and
:meth:`ModelContract.validate` fails loudly on anything missing or inconsistent, so serving refuses a
model it cannot honour instead of guessing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from app.core.errors import ContractError
from app.core.types import FloatArray

#: Version of the metadata layout written by :meth:`ModelContract.to_metadata`.
#: 2: the feature configuration gained the input level policy.
CONTRACT_VERSION = 2
#: Prefix of every contract key in an ONNX file's ``metadata_props``.
METADATA_PREFIX = "mer."

#: Name of the graph input: raw features (B, T, F), float32.
INPUT_NAME = "features"
#: Name of the graph output: emotion (B, T, O), float32.
OUTPUT_NAME = "emotion"
#: Metadata key naming a model's step sibling graph (``{"file", "sha256", "parity", "steps"}``).
STEP_MODEL_KEY = METADATA_PREFIX + "step_model"
#: A step graph's output for state input ``s`` is named ``s + STEP_NEXT_SUFFIX``.
STEP_NEXT_SUFFIX = "_next"
#: The outputs a served model has, in order (the last axis of the output tensor; the response schema
#: names them; training's target columns).
OUTPUTS = ("arousal", "valence")
#: The closed interval every output lies in (tanh).
OUTPUT_RANGE = (-1.0, 1.0)
#: Width of a ComParE_2016 functionals row.
NUM_COMPARE_FEATURES = 6373
#: Seconds between frame starts, and seconds each frame covers: non-overlapping 500 ms windows.
HOP_S = 0.5
WINDOW_S = 0.5

#: The only frame policy this build implements; see ``app.core.features`` and the README.
#: Frame k covers [k*hop, k*hop + window); only complete windows are emitted, so a clip of D seconds
#: gives floor(D / hop) frames and a trailing partial window is dropped.
FRAME_POLICY = "complete-windows-v1"
SUPPORTED_FEATURE_SETS = {("ComParE_2016", "Functionals"): NUM_COMPARE_FEATURES}
#: Compressions applied to raw features before standardisation. Some ComParE functionals reach ~1e12
#: on near-silent frames; ``signed_log1p`` (sign(x) * log(1 + |x|)) keeps such values from dominating
#: the statistics while staying monotonic and nearly linear for |x| < 1.
FEATURE_TRANSFORMS = ("none", "signed_log1p")
#: Window lengths for which this build ships an openSMILE frame-mode configuration.
SUPPORTED_WINDOWS_S = (WINDOW_S,)
#: How the input level is set before openSMILE sees the audio (see ``app.core.features.level_gain_db``).
#: ``gated-rms`` scales each clip to a target gated RMS level, so the features (and the model) do not
#: depend on how loud a recording was mastered or rendered; ``none`` passes samples through.
LEVEL_POLICIES = ("none", "gated-rms")
#: Range of accepted target levels for ``gated-rms``, in dBFS.
TARGET_LEVEL_RANGE_DBFS = (-60.0, -3.0)
#: Shortest chunk (in frames) a chunked configuration may use: shorter ones cost more in pre-roll than
#: they win in parallelism.
MIN_CHUNK_FRAMES = 10
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed; enough to extract them, before any model exists.

    Attributes:
        sample_rate: Analysis sample rate in Hz: audio is resampled to it before openSMILE.
        feature_set: openSMILE feature set name.
        feature_level: openSMILE feature level.
        hop_s: Seconds between frame starts.
        window_s: Seconds each frame's functionals cover (equal to ``hop_s``: non-overlapping).
        frame_policy: Name of the frame policy (see :data:`FRAME_POLICY`).
        level_policy: Input level normalisation (:data:`LEVEL_POLICIES`).
        target_level_dbfs: Gated RMS level, in dBFS, ``gated-rms`` scales each clip to.
        chunk_frames: 0: every clip is one openSMILE pass. Otherwise a clip of more than this many
            frames is cut, at window boundaries, into ``ceil(T / chunk_frames)`` chunks of (nearly)
            equal length, each extracted on its own (in parallel where a runner allows): the
            layout depends only on ``T`` (see ``app.core.features.chunk_layout``).
        chunk_preroll_frames: Whole windows of the audio before a chunk that its openSMILE pass also
            sees, and whose frames it drops, so the chunk's first descriptors have their context.
    """

    sample_rate: int = 16_000
    feature_set: str = "ComParE_2016"
    feature_level: str = "Functionals"
    hop_s: float = HOP_S
    window_s: float = WINDOW_S
    frame_policy: str = FRAME_POLICY
    level_policy: str = "gated-rms"
    target_level_dbfs: float = -23.0
    chunk_frames: int = 0
    chunk_preroll_frames: int = 0

    def validate(self) -> None:
        """Raise :class:`ContractError` if this build cannot compute these features."""
        problems = _feature_config_problems(self)
        if problems:
            raise ContractError("unsupported feature configuration: " + "; ".join(problems))

    @property
    def window_samples(self) -> int:
        """Samples per frame at the analysis rate."""
        return round(self.window_s * self.sample_rate)

    @property
    def chunked(self) -> bool:
        """Whether long clips are extracted in chunks (:attr:`chunk_frames` > 0)."""
        return self.chunk_frames > 0

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict; the chunking fields only when chunking is on.

        Unchunked configurations keep the exact dict (and so the cache keys and the metadata) they
        had before chunking existed, and a build that does not know chunking reads their models.
        """
        d = asdict(self)
        if not self.chunked:
            del d["chunk_frames"], d["chunk_preroll_frames"]
        return d

    def key(self) -> str:
        """Stable hash of these settings, e.g. for feature-cache keys."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ModelContract:
    """A trained model's complete I/O contract.

    Attributes:
        features: How the model's input features are computed.
        num_features: Width F of a feature row.
        feature_names_sha256: SHA-256 of the ordered feature names joined by newlines.
        opensmile_version: Version of the ``opensmile`` package that computed the training features.
        norm_mean: Per-feature mean of the (transformed) training data, shape (F,), float32.
        norm_std: Per-feature standard deviation of the (transformed) training data, (F,), > 0.
        feature_transform: Compression applied before standardisation (:data:`FEATURE_TRANSFORMS`).
        clip_z: Standardised values are clipped to [-clip_z, clip_z].
        outputs: Names of the model outputs, in order (last axis of the output tensor).
        output_range: Closed interval every output lies in.
        contract_version: Layout version of the metadata.
    """

    features: FeatureConfig
    num_features: int
    feature_names_sha256: str
    opensmile_version: str
    norm_mean: FloatArray = field(repr=False)
    norm_std: FloatArray = field(repr=False)
    outputs: tuple[str, ...] = OUTPUTS
    output_range: tuple[float, float] = OUTPUT_RANGE
    feature_transform: str = "signed_log1p"
    clip_z: float = 10.0
    contract_version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        # Keep private, read-only float32 copies so the frozen contract cannot change underneath us.
        for name in ("norm_mean", "norm_std"):
            arr = np.array(getattr(self, name), dtype=np.float32, copy=True).reshape(-1)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "output_range", tuple(float(v) for v in self.output_range))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelContract):
            return NotImplemented
        return (
            self._scalars() == other._scalars()
            and np.array_equal(self.norm_mean, other.norm_mean)
            and np.array_equal(self.norm_std, other.norm_std)
        )

    __hash__ = None  # type: ignore[assignment]

    def _scalars(self) -> dict[str, Any]:
        return {
            "features": self.features.as_dict(),
            "num_features": self.num_features,
            "feature_names_sha256": self.feature_names_sha256,
            "opensmile_version": self.opensmile_version,
            "outputs": list(self.outputs),
            "output_range": list(self.output_range),
            "feature_transform": self.feature_transform,
            "clip_z": self.clip_z,
            "contract_version": self.contract_version,
        }

    def normalise(self, features: npt.ArrayLike) -> FloatArray:
        """Reference implementation of the model's input normalisation (the ONNX graph does the same).

        Args:
            features: Raw ``(..., F)`` features from :mod:`app.core.features`.

        Returns:
            ``clip((transform(x) - norm_mean) / norm_std, -clip_z, clip_z)`` as float32.
        """
        x = transform_features(np.asarray(features, dtype=np.float32), self.feature_transform)
        z = (x - self.norm_mean) / self.norm_std
        return np.asarray(np.clip(z, -self.clip_z, self.clip_z), dtype=np.float32)

    def validate(self) -> None:
        """Check internal consistency; raise :class:`ContractError` listing every problem.

        Raises:
            ContractError: if any field is missing, malformed or inconsistent with another.
        """
        problems = _feature_config_problems(self.features)
        if self.contract_version != CONTRACT_VERSION:
            problems.append(
                f"contract_version {self.contract_version} is not {CONTRACT_VERSION} (this build)"
            )
        expected = SUPPORTED_FEATURE_SETS.get((self.features.feature_set, self.features.feature_level))
        if expected is not None and self.num_features != expected:
            problems.append(
                f"num_features {self.num_features} != {expected} for "
                f"{self.features.feature_set}/{self.features.feature_level}"
            )
        for name in ("norm_mean", "norm_std"):
            arr = getattr(self, name)
            if arr.shape != (self.num_features,):
                problems.append(f"{name} has shape {arr.shape}, expected ({self.num_features},)")
            elif not np.all(np.isfinite(arr)):
                problems.append(f"{name} holds non-finite values")
        if self.norm_std.shape == (self.num_features,) and np.any(self.norm_std <= 0):
            problems.append("norm_std must be > 0 everywhere")
        sha = self.feature_names_sha256
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            problems.append("feature_names_sha256 is not a lowercase hex SHA-256")
        if not self.opensmile_version:
            problems.append("opensmile_version is empty")
        if not self.outputs or len(set(self.outputs)) != len(self.outputs):
            problems.append(f"outputs must be non-empty and unique, got {list(self.outputs)}")
        if self.feature_transform not in FEATURE_TRANSFORMS:
            problems.append(f"feature_transform {self.feature_transform!r} not in {list(FEATURE_TRANSFORMS)}")
        if not (isinstance(self.clip_z, float | int) and math.isfinite(self.clip_z) and self.clip_z > 0):
            problems.append(f"clip_z {self.clip_z!r} must be a finite number > 0")
        low, high = self.output_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            problems.append(f"output_range {self.output_range} is not a finite interval")
        if problems:
            raise ContractError("invalid model contract: " + "; ".join(problems))

    def to_metadata(self) -> dict[str, str]:
        """Encode the contract as ONNX ``metadata_props`` strings (lossless).

        Returns:
            A mapping of ``mer.*`` keys to strings; floats keep their exact binary value.

        Example:
            >>> meta = contract.to_metadata()
            >>> ModelContract.from_metadata(meta) == contract
            True
        """
        scalars = self._scalars()
        meta = {METADATA_PREFIX + key: json.dumps(value, sort_keys=True) for key, value in scalars.items()}
        meta[METADATA_PREFIX + "norm_mean"] = _encode_array(self.norm_mean)
        meta[METADATA_PREFIX + "norm_std"] = _encode_array(self.norm_std)
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> ModelContract:
        """Decode and validate a contract written by :meth:`to_metadata`.

        Args:
            meta: ONNX ``metadata_props`` as a mapping; keys without the ``mer.`` prefix are ignored.

        Returns:
            The validated contract.

        Raises:
            ContractError: if keys are missing or any value is malformed or inconsistent.
        """
        required = [*_SCALAR_KEYS, "norm_mean", "norm_std"]
        missing = [k for k in required if METADATA_PREFIX + k not in meta]
        if missing:
            raise ContractError(
                "model metadata lacks contract keys: " + ", ".join(METADATA_PREFIX + k for k in missing)
            )
        try:
            raw = {k: json.loads(meta[METADATA_PREFIX + k]) for k in _SCALAR_KEYS}
            features = FeatureConfig(**raw["features"])
            contract = cls(
                features=features,
                num_features=_as_int(raw["num_features"], "num_features"),
                feature_names_sha256=str(raw["feature_names_sha256"]),
                opensmile_version=str(raw["opensmile_version"]),
                norm_mean=_decode_array(meta[METADATA_PREFIX + "norm_mean"]),
                norm_std=_decode_array(meta[METADATA_PREFIX + "norm_std"]),
                outputs=tuple(str(v) for v in raw["outputs"]),
                output_range=(float(raw["output_range"][0]), float(raw["output_range"][1])),
                feature_transform=str(raw["feature_transform"]),
                clip_z=float(raw["clip_z"]),
                contract_version=_as_int(raw["contract_version"], "contract_version"),
            )
        except ContractError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ContractError(f"malformed model contract metadata: {exc}") from exc
        contract.validate()
        return contract


_SCALAR_KEYS = (
    "features",
    "num_features",
    "feature_names_sha256",
    "opensmile_version",
    "outputs",
    "output_range",
    "feature_transform",
    "clip_z",
    "contract_version",
)
#: Prefix of every array value :meth:`ModelContract.to_metadata` writes (normalisation statistics).
ARRAY_TAG = "float32le:"


_Float = TypeVar("_Float", np.float32, np.float64)


def transform_features(x: npt.NDArray[_Float], transform: str) -> npt.NDArray[_Float]:
    """Apply a named compression from :data:`FEATURE_TRANSFORMS` to raw features (dtype kept)."""
    if transform == "none":
        return x
    if transform == "signed_log1p":
        return np.sign(x) * np.log1p(np.abs(x))
    raise ContractError(f"unknown feature_transform {transform!r}")


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"{name} must be an integer, got {value!r}")
    return value


def _encode_array(arr: FloatArray) -> str:
    return ARRAY_TAG + base64.b64encode(arr.astype("<f4").tobytes()).decode("ascii")


def _decode_array(text: str) -> FloatArray:
    if not text.startswith(ARRAY_TAG):
        raise ContractError(f"array value does not start with {ARRAY_TAG!r}")
    data = base64.b64decode(text[len(ARRAY_TAG) :], validate=True)
    if len(data) % 4:
        raise ContractError("array value is not a whole number of float32")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _feature_config_problems(cfg: FeatureConfig) -> list[str]:
    problems: list[str] = []
    if (cfg.feature_set, cfg.feature_level) not in SUPPORTED_FEATURE_SETS:
        problems.append(
            f"feature set {cfg.feature_set}/{cfg.feature_level} is not supported "
            f"(supported: {sorted(SUPPORTED_FEATURE_SETS)})"
        )
    if isinstance(cfg.sample_rate, bool) or not isinstance(cfg.sample_rate, int):
        problems.append(f"sample_rate must be an integer, got {cfg.sample_rate!r}")
    elif not MIN_SAMPLE_RATE <= cfg.sample_rate <= MAX_SAMPLE_RATE:
        problems.append(f"sample_rate {cfg.sample_rate} outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
    elif abs(cfg.window_s * cfg.sample_rate - round(cfg.window_s * cfg.sample_rate)) > 1e-9:
        problems.append(f"window_s {cfg.window_s} is not a whole number of samples")
    if cfg.window_s not in SUPPORTED_WINDOWS_S:
        problems.append(f"window_s {cfg.window_s} not supported (supported: {SUPPORTED_WINDOWS_S})")
    if cfg.hop_s != cfg.window_s:
        problems.append(f"hop_s {cfg.hop_s} != window_s {cfg.window_s}: frames must not overlap")
    if cfg.frame_policy != FRAME_POLICY:
        problems.append(f"frame_policy {cfg.frame_policy!r} is not {FRAME_POLICY!r}")
    if cfg.level_policy not in LEVEL_POLICIES:
        problems.append(f"level_policy {cfg.level_policy!r} not in {list(LEVEL_POLICIES)}")
    low, high = TARGET_LEVEL_RANGE_DBFS
    target = cfg.target_level_dbfs
    if isinstance(target, bool) or not isinstance(target, float | int) or not low <= target <= high:
        problems.append(f"target_level_dbfs {target!r} outside [{low}, {high}]")
    chunk, preroll = cfg.chunk_frames, cfg.chunk_preroll_frames
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (chunk, preroll)):
        problems.append(f"chunk_frames and chunk_preroll_frames must be integers, got {chunk!r}, {preroll!r}")
    elif chunk < 0 or preroll < 0:
        problems.append(f"chunk_frames {chunk} and chunk_preroll_frames {preroll} must be >= 0")
    elif chunk and chunk < MIN_CHUNK_FRAMES:
        problems.append(f"chunk_frames {chunk} must be 0 (off) or >= {MIN_CHUNK_FRAMES}")
    elif preroll > chunk:
        problems.append(f"chunk_preroll_frames {preroll} must not exceed chunk_frames {chunk}")
    return problems
