"""Synthetic music-like clips with known, lagged emotion targets, for tests and smoke runs.

Each clip is driven by slowly varying controls on a 20 Hz grid: tempo (60–180 BPM), loudness
(-32 to -8 dBFS per note), brightness (spectral tilt of the notes' harmonics), mode (major/minor,
switching every 5–12 s), register (key centre, MIDI pitch 45–69) and a background-noise level that
the targets ignore (a distractor). Every control has a per-clip base level (between-clip variance)
and moves within the clip through random knots every 3–8 s (within-clip variance).

The audio is rendered from the controls with numpy: on every beat the bar's chord (a triad of the
current mode from a I–IV–V–vi / i–iv–v–VI style progression, changing every 4 beats) and a melody
note, each an additive-harmonics wavetable voice with an exponential decay, plus a noise tick on the
beat and background noise. A 30 s clip renders in about 0.15 s at 16 kHz (0.3 s at 44.1 kHz).

Targets are known functions of the controls *with a lag*, so a model must integrate the past:

* arousal drive = mean of normalised tempo, loudness and brightness, each mapped to [-1, 1];
* valence drive = 0.2 × mode (+1 major, -1 minor) + 0.8 × normalised register. Mode is kept small
  on purpose: ComParE functionals carry no key or chroma information, and a ridge probe on them
  explains R² 0.04 of lagged mode but 0.71 of lagged register (400 clips, 16 kHz); a target
  dominated by mode could not be learned from these features by any model;
* each target is its drive delayed by ``delay_s`` (arousal 1.0 s, valence 1.5 s), then smoothed by a
  first-order low-pass with time constant ``tau_s`` (arousal 2 s, valence 3 s), starting from the
  drive's initial value, and read at each frame's end time ``0.5 k + 0.5``.

Drives are convex combinations of values in [-1, 1] and smoothing keeps that range, so targets lie in
[-1, 1]. Frame ``k`` covers ``[0.5 k, 0.5 k + 0.5)`` and ``offset_s = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
from scipy.signal import lfilter

from app.core.contract import HOP_S
from app.core.types import Float64Array
from model_export.datasets.base import Clip

#: Control grid rate in Hz.
CONTROL_RATE_HZ = 20
TEMPO_RANGE = (60.0, 180.0)
LOUDNESS_DB_RANGE = (-32.0, -8.0)
REGISTER_RANGE = (45.0, 69.0)
NOISE_DB_RANGE = (-62.0, -40.0)
AROUSAL_DELAY_S, AROUSAL_TAU_S = 1.0, 2.0
VALENCE_DELAY_S, VALENCE_TAU_S = 1.5, 3.0

_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
_PROGRESSION_DEGREES = (0, 3, 4, 5)  # I IV V vi (i iv v VI in minor)
_TABLE = 4096  # a power of two: wavetable indices wrap with a bit mask
#: One cycle of each harmonic 1..16; a voice's wavetable is a weighted sum of these rows.
_BASIS = np.sin(2 * np.pi * np.outer(np.arange(1, 17), np.arange(_TABLE) / _TABLE))


@dataclass(frozen=True)
class Controls:
    """Musical controls of one clip on a :data:`CONTROL_RATE_HZ` grid (index ``n`` ↔ ``n / rate`` s).

    Attributes:
        tempo_bpm: Beats per minute.
        loudness_db: Note level in dBFS.
        brightness: 0 (dull, steep harmonic roll-off) to 1 (bright).
        mode: +1 major, -1 minor.
        register: Key centre as a MIDI pitch.
        noise_db: Background noise level in dBFS (not used by the targets).
        duration_s: Clip length in seconds.
    """

    tempo_bpm: Float64Array
    loudness_db: Float64Array
    brightness: Float64Array
    mode: Float64Array
    register: Float64Array
    noise_db: Float64Array
    duration_s: float

    @property
    def times(self) -> Float64Array:
        """Time of each control sample in seconds."""
        return np.arange(self.tempo_bpm.size) / CONTROL_RATE_HZ

    def arousal_drive(self) -> Float64Array:
        """Instantaneous arousal in [-1, 1]: mean of normalised tempo, loudness and brightness."""
        return (
            _unit(self.tempo_bpm, TEMPO_RANGE)
            + _unit(self.loudness_db, LOUDNESS_DB_RANGE)
            + (2 * self.brightness - 1)
        ) / 3

    def valence_drive(self) -> Float64Array:
        """Instantaneous valence in [-1, 1]: mostly mode, partly register."""
        return 0.2 * self.mode + 0.8 * _unit(self.register, REGISTER_RANGE)


def _unit(x: Float64Array, bounds: tuple[float, float]) -> Float64Array:
    lo, hi = bounds
    return np.asarray(np.clip(2 * (x - lo) / (hi - lo) - 1, -1, 1))


def random_controls(rng: np.random.Generator, duration_s: float) -> Controls:
    """Draw smooth random controls with a per-clip base level and within-clip movement.

    Args:
        rng: Random source.
        duration_s: Clip length in seconds.

    Returns:
        Controls covering ``duration_s`` (plus one grid step).
    """
    n = math.ceil(duration_s * CONTROL_RATE_HZ) + 1
    t = np.arange(n) / CONTROL_RATE_HZ

    def smooth(bounds: tuple[float, float]) -> Float64Array:
        lo, hi = bounds
        base = rng.uniform(lo, hi)
        knots_t = np.concatenate([[0.0], np.cumsum(rng.uniform(3.0, 8.0, size=int(duration_s / 3) + 2))])
        knots_v = np.clip(base + 0.4 * (hi - lo) * rng.uniform(-1, 1, size=knots_t.size), lo, hi)
        i = np.clip(np.searchsorted(knots_t, t, side="right") - 1, 0, knots_t.size - 2)
        u = (t - knots_t[i]) / (knots_t[i + 1] - knots_t[i])
        u = u * u * (3 - 2 * u)  # smoothstep: no kinks at knots
        return np.asarray(knots_v[i] + (knots_v[i + 1] - knots_v[i]) * u)

    p_major = rng.uniform(0.15, 0.85)
    mode = np.empty(n)
    start = 0.0
    while start < t[-1] + 1e-9:
        end = start + rng.uniform(5.0, 12.0)
        mode[(t >= start) & (t < end)] = 1.0 if rng.random() < p_major else -1.0
        start = end
    return Controls(
        tempo_bpm=smooth(TEMPO_RANGE),
        loudness_db=smooth(LOUDNESS_DB_RANGE),
        brightness=smooth((0.0, 1.0)),
        mode=mode,
        register=smooth(REGISTER_RANGE),
        noise_db=smooth(NOISE_DB_RANGE),
        duration_s=duration_s,
    )


def lagged(drive: Float64Array, delay_s: float, tau_s: float) -> Float64Array:
    """Delay a control-rate signal by ``delay_s`` and low-pass it with time constant ``tau_s``.

    Before the start the signal is taken to have been at its initial value, so the output starts
    there too.
    """
    shift = round(delay_s * CONTROL_RATE_HZ)
    delayed = np.concatenate([np.full(shift, drive[0]), drive[: drive.size - shift]]) if shift else drive
    alpha = 1.0 - math.exp(-1.0 / (tau_s * CONTROL_RATE_HZ))
    out, _ = lfilter([alpha], [1.0, alpha - 1.0], delayed, zi=[(1.0 - alpha) * delayed[0]])
    return np.asarray(out)


def targets_from_controls(controls: Controls) -> npt.NDArray[np.float32]:
    """The clip's ``(T, 2)`` arousal/valence targets, ``T = floor(duration / 0.5)``."""
    count = math.floor(controls.duration_s / HOP_S + 1e-9)
    ends = np.round(HOP_S * (np.arange(count) + 1) * CONTROL_RATE_HZ).astype(int)
    ends = np.minimum(ends, controls.tempo_bpm.size - 1)
    arousal = lagged(controls.arousal_drive(), AROUSAL_DELAY_S, AROUSAL_TAU_S)[ends]
    valence = lagged(controls.valence_drive(), VALENCE_DELAY_S, VALENCE_TAU_S)[ends]
    return np.asarray(np.clip(np.stack([arousal, valence], axis=1), -1.0, 1.0), dtype=np.float32)


def render_audio(controls: Controls, sample_rate: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Render the controls to mono audio in [-1, 1].

    Args:
        controls: What to play.
        sample_rate: Output rate in Hz.
        rng: Random source for the progression, melody and noise.

    Returns:
        ``round(duration_s * sample_rate)`` float32 samples.
    """
    total = round(controls.duration_s * sample_rate)
    out = np.zeros(total)
    t_ctrl = controls.times
    # Beat onsets: where the integrated tempo crosses a whole number of beats.
    phase = np.concatenate([[0.0], np.cumsum(controls.tempo_bpm[:-1] / 60.0 / CONTROL_RATE_HZ)])
    beats = np.interp(np.arange(math.floor(phase[-1]) + 1), phase, t_ctrl)
    cache: dict[str, Float64Array] = {}
    melody_degree = 7
    degree = 0
    for b, onset in enumerate(beats):
        if onset >= controls.duration_s:
            break
        idx = min(round(onset * CONTROL_RATE_HZ), t_ctrl.size - 1)
        beat_s = 60.0 / controls.tempo_bpm[idx]
        scale = _MAJOR if controls.mode[idx] > 0 else _MINOR
        tonic = round(controls.register[idx])
        level = 10.0 ** (controls.loudness_db[idx] / 20.0)
        rolloff = 3.0 - 2.2 * controls.brightness[idx]
        if b % 4 == 0:
            degree = int(rng.choice(_PROGRESSION_DEGREES))
        for step in (0, 2, 4):
            pitch = tonic + _scale_pitch(scale, degree + step)
            _add_note(out, onset, 1.8 * beat_s, pitch, 0.35 * level, rolloff, sample_rate, cache)
        melody_degree = int(np.clip(melody_degree + rng.integers(-2, 3), 3, 13))
        pitch = tonic + 12 + _scale_pitch(scale, melody_degree)
        _add_note(out, onset, 0.9 * beat_s, pitch, 0.6 * level, rolloff, sample_rate, cache)
        _add_tick(out, onset, 0.4 * level, sample_rate, rng)
    noise_level = 10.0 ** (np.interp(np.arange(total) / sample_rate, t_ctrl, controls.noise_db) / 20.0)
    out += noise_level * rng.standard_normal(total)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _scale_pitch(scale: npt.NDArray[np.int64], degree: int) -> int:
    return int(scale[degree % 7] + 12 * (degree // 7))


def _add_note(
    out: Float64Array,
    onset_s: float,
    length_s: float,
    pitch: int,
    amp: float,
    rolloff: float,
    sample_rate: int,
    cache: dict[str, Float64Array],
) -> None:
    start = round(onset_s * sample_rate)
    n = min(round(length_s * sample_rate), out.size - start)
    if n <= 0:
        return
    f0 = 440.0 * 2.0 ** ((pitch - 69) / 12)
    harmonics = max(1, min(_BASIS.shape[0], int(0.45 * sample_rate / f0)))  # nothing above Nyquist
    weights = np.arange(1, harmonics + 1) ** -rolloff
    table = (weights / weights.sum()) @ _BASIS[:harmonics]
    env = cache.get("env")
    if env is None or env.size < n:
        k = np.arange(max(n, 2 * sample_rate))
        env = np.exp(-k / (0.35 * sample_rate)) * np.minimum(1.0, k / (0.005 * sample_rate))
        cache["env"] = env
    idx = (np.arange(n) * (f0 * _TABLE / sample_rate)).astype(np.int64) & (_TABLE - 1)
    voice = amp * env[:n] * table[idx]
    tail = min(n, round(0.01 * sample_rate))
    voice[n - tail :] *= np.linspace(1.0, 0.0, tail)  # short release: no click at the note's end
    out[start : start + n] += voice


def _add_tick(
    out: Float64Array, onset_s: float, amp: float, sample_rate: int, rng: np.random.Generator
) -> None:
    start = round(onset_s * sample_rate)
    n = min(round(0.03 * sample_rate), out.size - start)
    if n <= 0:
        return
    burst = rng.standard_normal(n)
    burst -= np.concatenate([[0.0], burst[:-1]])  # first difference: a brighter, hat-like tick
    out[start : start + n] += amp * 0.5 * burst * np.exp(-np.arange(n) / (0.006 * sample_rate))


def synthesize(
    rng: np.random.Generator, duration_s: float, sample_rate: int
) -> tuple[npt.NDArray[np.float32], Controls, npt.NDArray[np.float32]]:
    """Draw controls, render them and compute their targets.

    Returns:
        The audio, the controls and the ``(T, 2)`` targets.
    """
    controls = random_controls(rng, duration_s)
    audio = render_audio(controls, sample_rate, rng)
    return audio, controls, targets_from_controls(controls)


def generate(
    out_dir: Path, n_clips: int = 16, duration_s: float = 30.0, sample_rate: int = 16_000, seed: int = 0
) -> list[Clip]:
    """Write ``n_clips`` synthetic clips as 16-bit FLAC files and return them.

    Args:
        out_dir: Folder for the audio (created).
        n_clips: Number of clips.
        duration_s: Length of each clip in seconds (at least 0.5).
        sample_rate: Audio rate in Hz.
        seed: Everything (controls, notes, noise) is a deterministic function of it and the clip index.

    Returns:
        Clips ``synthetic-<seed>-<i>`` with ``floor(duration_s / 0.5)`` frames and ``offset_s = 0``.
    """
    if duration_s < HOP_S:
        raise ValueError(f"duration_s must be at least {HOP_S}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, i])
        audio, _, targets = synthesize(rng, duration_s, sample_rate)
        clip_id = f"synthetic-{seed}-{i:04d}"
        path = out_dir / f"{clip_id}.flac"
        sf.write(str(path), audio, sample_rate, format="FLAC", subtype="PCM_16")
        clips.append(Clip(clip_id=clip_id, audio_path=path, targets=targets, offset_s=0.0, group=clip_id))
    return clips


def load(
    root: Path, n_clips: int = 64, duration_s: float = 30.0, sample_rate: int = 16_000, seed: int = 0
) -> list[Clip]:
    """Recipe entry point: :func:`generate` into ``root`` (same arguments)."""
    return generate(root, n_clips, duration_s, sample_rate, seed)
