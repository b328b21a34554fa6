from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from app.core.audio import decode
from app.core.contract import FeatureConfig
from app.core.features import LOOKAHEAD_S, FeatureExtractor
from model_export.cache import FeatureCache
from model_export.datasets.base import Clip
from model_export.testing import synth_music

SR = 16_000


def _clips(tmp_path: Path, n: int = 3) -> list[Clip]:
    clips = []
    for i in range(n):
        path = tmp_path / f"c{i}.flac"
        sf.write(path, synth_music(6.0, SR, seed=i), SR)
        clips.append(Clip(f"c{i}", path, np.zeros((8, 2), np.float32), offset_s=1.5, group=f"g{i}"))
    return clips


def test_cached_features_match_the_feature_path(tmp_path: Path, extractor16k: FeatureExtractor) -> None:
    clips = _clips(tmp_path)
    cache = FeatureCache(tmp_path / "cache", extractor16k)
    feats = cache.load_all(clips, workers=2, progress=False)
    assert set(feats) == {"c0", "c1", "c2"}
    # The cache analyses the labelled range (plus look-ahead) only, so the level policy's gain comes
    # from that range too.
    signal = decode(clips[1].audio_path, SR, offset_s=1.5, duration_s=8 * 0.5 + LOOKAHEAD_S)
    direct = extractor16k.extract(signal).values[:8]
    np.testing.assert_array_equal(feats["c1"], direct)
    assert feats["c1"].shape == (8, 6373)


def test_second_run_reads_and_interrupted_run_resumes(tmp_path: Path, extractor16k: FeatureExtractor) -> None:
    clips = _clips(tmp_path)
    cache = FeatureCache(tmp_path / "cache", extractor16k)
    first = cache.load_all(clips, progress=False)
    entries = sorted(cache.folder.glob("*.npy"))
    assert len(entries) == 3
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    entries[0].unlink()  # as if the run had stopped before this clip
    second = cache.load_all(clips, progress=False)
    for p in entries[1:]:
        assert p.stat().st_mtime_ns == stamps[p]  # read back, not recomputed
    assert entries[0].exists()
    for key, value in first.items():
        np.testing.assert_array_equal(second[key], value)
    assert not list(cache.folder.glob(".*.tmp"))


def test_keys_follow_content_config_and_range(tmp_path: Path, extractor16k: FeatureExtractor) -> None:
    clip = _clips(tmp_path, 1)[0]
    cache16 = FeatureCache(tmp_path / "cache", extractor16k)
    cache44 = FeatureCache(tmp_path / "cache", FeatureExtractor(FeatureConfig(sample_rate=44_100)))
    assert cache16.folder != cache44.folder
    before = cache16.path_for(clip)
    shifted = Clip(clip.clip_id, clip.audio_path, clip.targets, offset_s=2.0)
    assert cache16.path_for(shifted) != before
    sf.write(clip.audio_path, synth_music(6.0, SR, seed=99), SR)
    assert cache16.path_for(clip) != before


def test_a_broken_file_is_skipped_not_fatal(tmp_path: Path, extractor16k: FeatureExtractor) -> None:
    clips = _clips(tmp_path, 2)
    clips[0].audio_path.write_bytes(b"not audio")
    feats = FeatureCache(tmp_path / "cache", extractor16k).load_all(clips, progress=False)
    assert set(feats) == {"c1"}
