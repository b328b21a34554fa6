"""ComParE_2016 functionals per non-overlapping 500 ms window, in one openSMILE pass (or one per chunk).

This module is THE feature path: training (``model_export``) and serving call the same
:meth:`FeatureExtractor.extract`, so a model never sees features computed differently from the ones
it was trained on.

Frame policy (``complete-windows-v1``): frame ``k`` covers ``[0.5 k, 0.5 k + 0.5)`` seconds. Only
complete windows are emitted: a clip of ``D`` seconds gives ``floor(D / 0.5)`` frames and a trailing
partial window is dropped (0.5 s → 1 frame, 30.0 s → 60, 30.06 s → 60, 30.5 s → 61, 45 s → 90). A clip
shorter than one window is an error, never a row of NaN. openSMILE's low-level descriptors of the last
10 ms steps of a window reach up to 60 ms past its end; the audio after the last complete window is
used for that where it exists, and zeros fill in where it does not (so the last frame of a clip that
ends exactly on a boundary is computed with silence as that tiny look-ahead). Jitter and the
Viterbi-smoothed voicing look further, up to ~0.2 s (measured), so those few descriptors of a clip's
last frame can differ from the same frame of a longer excerpt.

Input level (``level_policy = "gated-rms"``): before openSMILE, each clip is scaled so that its gated
RMS level (0.4 s blocks; blocks under -70 dBFS, and then those 10 dB under the mean of the rest, are
ignored, as in ITU-R BS.1770 but without its K-weighting filter) equals ``target_level_dbfs``, unless
that would push the peak over -0.1 dBFS, in which case the peak decides. Both the level and the peak
scale with the input gain, so a clip played 20 dB louder gives the same features: many ComParE
functionals are energies, and a model trained on renders at one level otherwise fails on recordings
mastered at another. Levels within a clip (crescendos, quiet intros) are kept: there is one gain per
clip. A clip whose every block lies under -70 dBFS is left as it is, and the gain never exceeds
+40 dB, so silence stays silence rather than amplified noise.

openSMILE computes functionals for all windows in a single run with ``frameMode = fixed``; this is
about 2x faster than one call per window, but gives slightly different numbers (the low-level
descriptors see their neighbours across window edges), which is why there must be only one path.

Chunks (``FeatureConfig.chunk_frames`` > 0): one openSMILE pass uses one core, so a long song would
take as long on 16 cores as on one. A chunked configuration cuts a clip of more than ``chunk_frames``
frames at window boundaries into chunks whose layout depends only on the number of frames
(:func:`chunk_layout`), never on the cores; each chunk's pass also sees ``chunk_preroll_frames``
windows of the audio before it and one after it (their frames are dropped) plus the same look-ahead,
and the level policy's gain is computed once over the whole clip before the cut. The chunks may run
in parallel (a :class:`ChunkRunner`, e.g. the service's worker pool) or one after another: the result
is the same array either way, so training, the feature cache, the batch CLI and serving agree by
construction. What the cut changes against one pass (descriptors with memory longer than the pre-roll)
is measured in ``bench/chunking.py`` and docs/performance.md; the setting is part of the contract.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version as _pkg_version
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import opensmile

from app.core.contract import HOP_S, FeatureConfig, ModelContract
from app.core.errors import AudioTooShortError, ContractError, CorruptAudioError
from app.core.types import Float64Array, FloatArray

#: Seconds of audio after the last complete window handed to openSMILE (real audio if the clip has
#: it, zeros otherwise): the LLDs of a window's last 10 ms steps use up to 60 ms of audio past its end.
LOOKAHEAD_S = 0.1
#: Whole windows after a chunk (where the clip goes on) that its openSMILE pass also computes and drops:
#: some pitch descriptors (jitter, the Viterbi-smoothed voicing) of a window's last steps look further
#: ahead than :data:`LOOKAHEAD_S` (up to ~0.2 s, measured), so a chunk's last frame would differ without it.
CHUNK_POSTROLL_FRAMES = 1
_INT16_MAX = 32767 / 32768  # openSMILE casts signal * 32768 to int16; 1.0 would wrap to -32768.
LEVEL_BLOCK_S = 0.4
LEVEL_ABSOLUTE_GATE_DBFS = -70.0
LEVEL_RELATIVE_GATE_DB = -10.0
LEVEL_PEAK_CEILING_DBFS = -0.1
LEVEL_MAX_GAIN_DB = 40.0


_T = TypeVar("_T")


class ChunkRunner(Protocol):
    """Runs the chunks of one clip's extraction, possibly in parallel (e.g. on a worker pool)."""

    def map(self, fn: Callable[[int], _T], count: int) -> list[_T]:
        """Return ``[fn(0), ..., fn(count - 1)]``; the calls may run concurrently, in any order."""
        ...


class SequentialRunner:
    """A :class:`ChunkRunner` that runs the chunks one after another in the calling thread."""

    def map(self, fn: Callable[[int], _T], count: int) -> list[_T]:
        """Return ``[fn(0), ..., fn(count - 1)]``, computed in order."""
        return [fn(i) for i in range(count)]


@dataclass(frozen=True)
class Chunk:
    """One openSMILE pass of a chunked extraction, in frames of the whole clip.

    Attributes:
        first: First frame of the clip this chunk gives.
        count: Frames it gives.
        preroll: Frames before ``first`` its pass also computes and drops.
        postroll: Frames after the chunk its pass also computes and drops.
    """

    first: int
    count: int
    preroll: int
    postroll: int = 0


def chunk_layout(frames: int, config: FeatureConfig) -> list[Chunk]:
    """How a clip of ``frames`` frames is cut: a function of ``frames`` and the config only.

    Args:
        frames: Frames of the clip (``T``).
        config: The feature configuration (``chunk_frames``, ``chunk_preroll_frames``).

    Returns:
        One chunk covering everything when chunking is off or ``T <= chunk_frames``; otherwise
        ``n = ceil(T / chunk_frames)`` consecutive chunks whose lengths differ by at most one frame
        (the longer ones first), each with ``min(chunk_preroll_frames, first)`` frames of pre-roll and
        :data:`CHUNK_POSTROLL_FRAMES` of post-roll (none for the last chunk, which ends the clip).
    """
    if frames <= 0:
        return []
    size = config.chunk_frames
    if size <= 0 or frames <= size:
        return [Chunk(0, frames, 0)]
    n = -(-frames // size)
    base, extra = divmod(frames, n)
    chunks, first = [], 0
    for i in range(n):
        count = base + (1 if i < extra else 0)
        post = min(CHUNK_POSTROLL_FRAMES, frames - first - count)
        chunks.append(Chunk(first, count, min(config.chunk_preroll_frames, first), post))
        first += count
    return chunks


@dataclass(frozen=True)
class Features:
    """Per-frame features of one clip.

    Attributes:
        values: ``(T, F)`` float32 functionals, all finite.
        starts: ``(T,)`` frame start times in seconds.
        ends: ``(T,)`` frame end times in seconds.
        gain_db: Gain the level policy applied to the clip before extraction, in dB.
    """

    values: FloatArray
    starts: Float64Array
    ends: Float64Array
    gain_db: float = 0.0

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.values.shape[0])


def opensmile_version() -> str:
    """Version of the installed ``opensmile`` package (recorded in every contract)."""
    return _pkg_version("opensmile")


def num_frames(num_samples: int, config: FeatureConfig) -> int:
    """Frames the frame policy yields for a signal of ``num_samples`` at the analysis rate."""
    return num_samples // config.window_samples


def frames_in_duration(duration_s: float, hop_s: float = HOP_S) -> int:
    """Frames the frame policy yields for ``duration_s`` seconds of audio (e.g. from a header).

    The same count as :func:`num_frames` for a signal of that length, computed from seconds: a
    microsecond of slack keeps float rounding from losing a frame (45.0 s from 14.5 s is 61 frames).
    """
    return max(0, math.floor(duration_s / hop_s + 1e-6))


def names_sha256(names: list[str]) -> str:
    """SHA-256 of feature names joined by newlines (the contract's names hash)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def gated_level_dbfs(signal: npt.ArrayLike, sample_rate: int) -> float | None:
    """Gated RMS level of a mono signal in dBFS (BS.1770-style gating, no K-weighting).

    Args:
        signal: Mono samples in [-1, 1].
        sample_rate: Its sample rate in Hz.

    Returns:
        The level of the blocks that pass both gates, or ``None`` if every block lies under the
        absolute gate (silence, near-silence).
    """
    x = np.asarray(signal, dtype=np.float32).reshape(-1)
    n = max(1, round(LEVEL_BLOCK_S * sample_rate))
    blocks = x[: x.size // n * n].reshape(-1, n) if x.size >= n else x.reshape(1, -1)
    if blocks.size == 0:
        return None
    # einsum keeps memory at one float per block even for a 15-minute song.
    power = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / blocks.shape[1]
    return gated_level_from_power(power)


def gated_level_from_power(power: npt.NDArray[np.float64]) -> float | None:
    """The gated level, in dBFS, of blocks with these mean-square powers (see :func:`gated_level_dbfs`)."""
    if power.size == 0:
        return None
    with np.errstate(divide="ignore"):
        level = 10.0 * np.log10(power)
    keep = level > LEVEL_ABSOLUTE_GATE_DBFS
    if not keep.any():
        return None
    relative_gate = 10.0 * math.log10(float(power[keep].mean())) + LEVEL_RELATIVE_GATE_DB
    keep &= level > relative_gate
    return 10.0 * math.log10(float(power[keep].mean()))


def level_gain_db(signal: npt.ArrayLike, config: FeatureConfig) -> float:
    """Gain, in dB, that ``config.level_policy`` applies to ``signal`` before extraction.

    Args:
        signal: Mono samples in [-1, 1] at ``config.sample_rate``.
        config: The feature configuration (its level policy and target).

    Returns:
        0 for ``level_policy = "none"`` and for signals under the absolute gate; otherwise the gain
        that brings the gated level to the target, lowered if needed to keep the peak at -0.1 dBFS
        and capped at +40 dB.
    """
    if config.level_policy == "none":
        return 0.0
    x = np.asarray(signal, dtype=np.float32).reshape(-1)
    level = gated_level_dbfs(x, config.sample_rate)
    return _gain_db(level, float(np.max(np.abs(x))), config)


def level_gain_from_blocks(power: npt.NDArray[np.float64], peak: float, config: FeatureConfig) -> float:
    """:func:`level_gain_db` from block powers and the peak (a stream's running gain, ``app.core.stream``)."""
    if config.level_policy == "none":
        return 0.0
    return _gain_db(gated_level_from_power(power), peak, config)


def _gain_db(level: float | None, peak: float, config: FeatureConfig) -> float:
    if level is None:
        return 0.0
    peak_room = LEVEL_PEAK_CEILING_DBFS - 20.0 * math.log10(peak)
    return min(config.target_level_dbfs - level, peak_room, LEVEL_MAX_GAIN_DB)


def _scaled_segment(x: FloatArray, start: int, length: int, scale: np.float32 | None) -> FloatArray:
    """``length`` samples of ``x`` from ``start``, times the gain, clipped to int16's range, zero-padded."""
    out = np.zeros(length, dtype=np.float32)
    used = max(0, min(x.size - start, length))
    if scale is not None:
        np.multiply(x[start : start + used], scale, out=out[:used])
        np.clip(out[:used], -1.0, _INT16_MAX, out=out[:used])
    else:
        np.clip(x[start : start + used], -1.0, _INT16_MAX, out=out[:used])
    return out


class FeatureExtractor:
    """Reusable, thread-safe extractor for one :class:`FeatureConfig`.

    One ``opensmile.Smile`` object is built once and reused; it parses its configuration per call
    into a fresh native instance and releases the GIL while it runs, so one extractor may serve many
    threads at once.

    Example:
        >>> fx = FeatureExtractor(FeatureConfig(sample_rate=16_000))
        >>> feats = fx.extract(signal)  # mono float32 at 16 kHz
        >>> feats.values.shape
        (60, 6373)
    """

    def __init__(self, config: FeatureConfig) -> None:
        config.validate()
        self.config = config
        conf = resources.files("app.core") / "opensmile" / "FrameModeFunctionals_fixed_500ms.conf.inc"
        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet[config.feature_set],
            feature_level=opensmile.FeatureLevel[config.feature_level],
            # The wrapper substitutes this include into every functionals component; copying the
            # include into a config alone has no effect.
            options={"frameModeFunctionalsConf": str(conf)},
        )
        self.feature_names: list[str] = list(self._smile.feature_names)
        self.feature_names_sha256 = names_sha256(self.feature_names)

    @property
    def num_features(self) -> int:
        """Width F of a feature row."""
        return len(self.feature_names)

    def check_contract(self, contract: ModelContract) -> None:
        """Refuse a model contract whose features this extractor does not compute exactly.

        Raises:
            ContractError: if the feature configuration, width, names or openSMILE version differ.
        """
        problems = []
        if contract.features != self.config:
            problems.append(f"features {contract.features} != extractor's {self.config}")
        if contract.num_features != self.num_features:
            problems.append(f"num_features {contract.num_features} != {self.num_features}")
        if contract.feature_names_sha256 != self.feature_names_sha256:
            problems.append("feature names (hash) differ from this openSMILE build's")
        ours = opensmile_version().split(".")[:2]
        if contract.opensmile_version.split(".")[:2] != ours:
            problems.append(
                f"model was trained with opensmile {contract.opensmile_version}, "
                f"this build has {opensmile_version()}"
            )
        if problems:
            raise ContractError("model contract cannot be honoured: " + "; ".join(problems))

    def extract(self, signal: npt.ArrayLike, runner: ChunkRunner | None = None) -> Features:
        """Compute the functionals of every complete window of ``signal``.

        The level policy of the configuration is applied first (one gain for the whole signal), then
        the signal is cut as :func:`chunk_layout` says (one pass when chunking is off).

        Args:
            signal: Mono samples in [-1, 1] at ``config.sample_rate`` (1-D).
            runner: Runs the chunks of a chunked configuration (in parallel where it can); by
                default they run one after another in this thread. The result does not depend on it.

        Returns:
            Features with ``floor(len(signal) / window_samples)`` rows.

        Raises:
            AudioTooShortError: if the signal is shorter than one window.
            CorruptAudioError: if the signal holds NaN or infinite samples.
        """
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"signal must be 1-D (mono), got shape {x.shape}")
        win = self.config.window_samples
        t = num_frames(x.size, self.config)
        if t == 0:
            raise AudioTooShortError(
                f"audio lasts {x.size / self.config.sample_rate:.3f} s; at least one "
                f"{self.config.window_s} s frame is needed"
            )
        if not np.all(np.isfinite(x)):
            raise CorruptAudioError("audio holds NaN or infinite samples")
        gain_db = level_gain_db(x, self.config)
        scale = np.float32(10.0 ** (gain_db / 20.0)) if gain_db else None
        tail = math.ceil(LOOKAHEAD_S * self.config.sample_rate)
        chunks = chunk_layout(t, self.config)
        if len(chunks) == 1:
            values = self._functionals(_scaled_segment(x, 0, t * win + tail, scale), t)
        else:
            values = np.empty((t, self.num_features), dtype=np.float32)

            def run_chunk(i: int) -> None:
                c = chunks[i]
                frames = c.preroll + c.count + c.postroll
                # Each chunk scales its own stretch of the signal: no second copy of a long song.
                # Post-roll and look-ahead are real audio where the clip has it, as in one pass.
                segment = _scaled_segment(x, (c.first - c.preroll) * win, frames * win + tail, scale)
                out = self._functionals(segment, frames)
                values[c.first : c.first + c.count] = out[c.preroll : c.preroll + c.count]

            (runner or SequentialRunner()).map(run_chunk, len(chunks))
        if not np.all(np.isfinite(values)):
            # Never hand NaN/inf to a model; clip infinities to float32's range, NaN to 0.
            big = float(np.finfo(np.float32).max)
            values = np.nan_to_num(values, nan=0.0, posinf=big, neginf=-big)
        starts = np.arange(t, dtype=np.float64) * self.config.hop_s
        return Features(values=values, starts=starts, ends=starts + self.config.window_s, gain_db=gain_db)

    def _functionals(self, padded: FloatArray, frames: int) -> FloatArray:
        """One openSMILE pass over ``frames`` windows plus their look-ahead: ``(frames, F)`` float32."""
        values = np.asarray(self._smile(padded[None, :], self.config.sample_rate))[0].T
        if values.shape != (frames, self.num_features):
            raise RuntimeError(
                f"openSMILE returned {values.shape} features, frame policy expects "
                f"({frames}, {self.num_features})"
            )
        return np.ascontiguousarray(values, dtype=np.float32)
