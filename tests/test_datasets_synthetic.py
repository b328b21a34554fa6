from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model_export.datasets import synthetic


def test_generate_is_deterministic_and_well_formed(tmp_path: Path) -> None:
    a = synthetic.generate(tmp_path / "a", n_clips=3, duration_s=10.0, sample_rate=16_000, seed=7)
    b = synthetic.generate(tmp_path / "b", n_clips=3, duration_s=10.0, sample_rate=16_000, seed=7)
    c = synthetic.generate(tmp_path / "c", n_clips=3, duration_s=10.0, sample_rate=16_000, seed=8)
    assert [x.clip_id for x in a] == ["synthetic-7-0000", "synthetic-7-0001", "synthetic-7-0002"]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.targets, y.targets)
        assert x.audio_path.read_bytes() == y.audio_path.read_bytes()
    assert not np.array_equal(a[0].targets, c[0].targets)
    for clip in a:
        assert clip.targets.shape == (20, 2)
        assert clip.targets.dtype == np.float32
        assert np.abs(clip.targets).max() <= 1.0
        assert clip.offset_s == 0.0
        info = sf.info(str(clip.audio_path))
        assert (info.samplerate, info.frames, info.channels) == (16_000, 160_000, 1)


def test_variance_between_and_within_clips(tmp_path: Path) -> None:
    clips = synthetic.generate(tmp_path, n_clips=12, duration_s=30.0, seed=1)
    means = np.stack([c.targets.mean(axis=0) for c in clips])
    within = np.stack([c.targets.std(axis=0) for c in clips]).mean(axis=0)
    assert np.all(means.std(axis=0) > 0.1)
    assert np.all(within > 0.03)


def test_targets_follow_controls_with_a_lag() -> None:
    controls = synthetic.random_controls(np.random.default_rng(3), 30.0)
    base = synthetic.targets_from_controls(controls)
    # Change every control from 10 s on: nothing before 10 s + delay may move, later frames must.
    cut = 10 * synthetic.CONTROL_RATE_HZ
    changed = replace(
        controls,
        tempo_bpm=np.where(np.arange(controls.tempo_bpm.size) >= cut, 180.0, controls.tempo_bpm),
        mode=np.where(np.arange(controls.mode.size) >= cut, -controls.mode, controls.mode),
    )
    moved = synthetic.targets_from_controls(changed)
    ends = 0.5 * (np.arange(base.shape[0]) + 1)
    for col, delay in ((0, synthetic.AROUSAL_DELAY_S), (1, synthetic.VALENCE_DELAY_S)):
        before = ends <= 10.0 + delay - 0.05
        np.testing.assert_array_equal(moved[before, col], base[before, col])
        assert (
            np.abs(moved[ends >= 10.0 + delay + 1.0, col] - base[ends >= 10.0 + delay + 1.0, col]).min() > 0
        )
    # The lag also shows as smoothing: a step in the drive reaches the target gradually.
    step = synthetic.lagged(np.r_[np.zeros(100), np.ones(200)], 1.0, 2.0)
    assert step[100 + 19] == 0.0  # still inside the 1 s (20-step) delay
    assert step[100 + 20] > 0.0
    assert step[100 + 20 + 39] == pytest.approx(1 - np.exp(-1))  # one 2 s time constant later
    assert step[-1] > 0.95


def test_audio_reflects_loudness_control() -> None:
    sr = 16_000
    audio, controls, _ = synthetic.synthesize(np.random.default_rng(5), 30.0, sr)
    frames = audio[: 60 * sr // 2].reshape(60, -1)
    rms_db = 20 * np.log10(np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) + 1e-9)
    level = np.interp(0.5 * np.arange(60) + 0.25, controls.times, controls.loudness_db)
    assert np.corrcoef(rms_db, level)[0, 1] > 0.6


def test_render_speed() -> None:
    start = time.perf_counter()
    synthetic.synthesize(np.random.default_rng(0), 30.0, 16_000)
    assert time.perf_counter() - start < 1.0


def test_duration_must_hold_a_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duration_s"):
        synthetic.generate(tmp_path, n_clips=1, duration_s=0.4)
