"""ComParE_2016 functionals per non-overlapping 500 ms window, in one openSMILE pass.

This module is THE feature path: training (``model_export``) and serving call the same
:meth:`FeatureExtractor.extract`, so a model never sees features computed differently from the ones
it was trained on.

Frame policy (``complete-windows-v1``): frame ``k`` covers ``[0.5 k, 0.5 k + 0.5)`` seconds. Only
complete windows are emitted: a clip of ``D`` seconds gives ``floor(D / 0.5)`` frames and a trailing
partial window is dropped (0.5 s → 1 frame, 30.0 s → 60, 30.06 s → 60, 30.5 s → 61, 45 s → 90). A clip
shorter than one window is an error, never a row of NaN. openSMILE's low-level descriptors of the last
10 ms steps of a window reach up to 60 ms past its end; the audio after the last complete window is
used for that where it exists, and zeros fill in where it does not (so the last frame of a clip that
ends exactly on a boundary is computed with silence as that tiny look-ahead).

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
Long signals are not split across cores: a split would change descriptors at the cut. Parallelism
happens across clips instead (the feature cache for training, the worker pool for serving).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version as _pkg_version

import numpy as np
import numpy.typing as npt
import opensmile

from app.core.contract import HOP_S, FeatureConfig, ModelContract
from app.core.errors import AudioTooShortError, ContractError, CorruptAudioError
from app.core.types import Float64Array, FloatArray

#: Seconds of audio after the last complete window handed to openSMILE (real audio if the clip has
#: it, zeros otherwise): the LLDs of a window's last 10 ms steps use up to 60 ms of audio past its end.
LOOKAHEAD_S = 0.1
_INT16_MAX = 32767 / 32768  # openSMILE casts signal * 32768 to int16; 1.0 would wrap to -32768.
LEVEL_BLOCK_S = 0.4
LEVEL_ABSOLUTE_GATE_DBFS = -70.0
LEVEL_RELATIVE_GATE_DB = -10.0
LEVEL_PEAK_CEILING_DBFS = -0.1
LEVEL_MAX_GAIN_DB = 40.0


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
    if level is None:
        return 0.0
    peak = float(np.max(np.abs(x)))
    peak_room = LEVEL_PEAK_CEILING_DBFS - 20.0 * math.log10(peak)
    return min(config.target_level_dbfs - level, peak_room, LEVEL_MAX_GAIN_DB)


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

    def extract(self, signal: npt.ArrayLike) -> Features:
        """Compute the functionals of every complete window of ``signal``.

        The level policy of the configuration is applied first (one gain for the whole signal).

        Args:
            signal: Mono samples in [-1, 1] at ``config.sample_rate`` (1-D).

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
        tail = math.ceil(LOOKAHEAD_S * self.config.sample_rate)
        padded = np.zeros(t * win + tail, dtype=np.float32)
        used = min(x.size, padded.size)
        if gain_db:
            np.multiply(x[:used], np.float32(10.0 ** (gain_db / 20.0)), out=padded[:used])
            np.clip(padded[:used], -1.0, _INT16_MAX, out=padded[:used])
        else:
            np.clip(x[:used], -1.0, _INT16_MAX, out=padded[:used])
        values = np.asarray(self._smile(padded[None, :], self.config.sample_rate))[0].T
        if values.shape != (t, self.num_features):
            raise RuntimeError(
                f"openSMILE returned {values.shape} features, frame policy expects ({t}, {self.num_features})"
            )
        values = np.ascontiguousarray(values, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            # Never hand NaN/inf to a model; clip infinities to float32's range, NaN to 0.
            big = float(np.finfo(np.float32).max)
            values = np.nan_to_num(values, nan=0.0, posinf=big, neginf=-big)
        starts = np.arange(t, dtype=np.float64) * self.config.hop_s
        return Features(values=values, starts=starts, ends=starts + self.config.window_s, gain_db=gain_db)
