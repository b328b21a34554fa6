from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from model_export.datasets import songs1000
from tests.datasets_fixtures import sample_header, write_audio, write_wide_csv

HEADER = sample_header(15_000, 61)


def _values(song: int, sign: float) -> list[float | None]:
    # Distinct, exactly representable values per song and frame: k/64 scaled into [-1, 1].
    return [sign * ((song * 7 + k) % 64) / 64 for k in range(61)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("songs1000")
    for song in (2, 3, 5, 7):
        seconds = 44.0 if song == 7 else 45.0  # song 7's audio ends 1 s early
        write_audio(root / "clips_45seconds" / f"{song}.mp3", seconds, seed=song)
    arousal = {str(s): _values(s, 1.0) for s in (2, 3, 4, 5, 7, 11)}  # 4: no audio
    valence = {str(s): _values(s, -1.0) for s in (2, 3, 4, 5, 7)}  # 11: no valence row
    bad = list(_values(3, -1.0))
    bad[10] = None  # song 3: one missing value
    valence["3"] = bad
    write_wide_csv(root / songs1000.AROUSAL_CSV, HEADER, arousal)
    write_wide_csv(root / songs1000.VALENCE_CSV, HEADER, valence)
    return root


def test_alignment_offset_and_all_61_labels(tree: Path) -> None:
    clips = {c.clip_id: c for c in songs1000.load(tree)}
    clip = clips["2"]
    assert clip.offset_s == 14.5  # label at 15 000 ms ends frame [14.5, 15.0)
    assert clip.num_frames == 61  # 14.5 + 61 * 0.5 = 45.0: the last frame ends with the clip
    assert clip.group == "2"
    assert clip.audio_path == tree / "clips_45seconds" / "2.mp3"
    expected_a, expected_v = _values(2, 1.0), _values(2, -1.0)
    for k in (0, 1, 30, 60):
        assert clip.targets[k, 0] == pytest.approx(expected_a[k])
        assert clip.targets[k, 1] == pytest.approx(expected_v[k])
    assert clip.targets.dtype == np.float32


def test_skips_missing_audio_missing_rows_and_nan(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        clips = songs1000.load(tree)
    assert [c.clip_id for c in clips] == ["2", "5", "7"]
    text = caplog.text
    assert "1 songs (missing labels): 3" in text
    assert "1 songs (missing audio): 4" in text
    assert "1 songs (no valence row): 11" in text


def test_short_audio_drops_uncovered_frames(tree: Path) -> None:
    clips = {c.clip_id: c for c in songs1000.load(tree)}
    assert clips["7"].num_frames == 59  # (44.0 - 14.5) / 0.5
    assert songs1000.load(tree, check_audio=False)[-1].num_frames == 61


def test_refuses_wrong_scale(tmp_path: Path) -> None:
    write_audio(tmp_path / "clips_45seconds" / "1.mp3", 1.0)
    write_wide_csv(tmp_path / songs1000.AROUSAL_CSV, HEADER, {"1": [5.0] * 61})
    write_wide_csv(tmp_path / songs1000.VALENCE_CSV, HEADER, {"1": [0.0] * 61})
    with pytest.raises(ValueError, match="outside"):
        songs1000.load(tmp_path, check_audio=False)


def test_missing_annotations_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        songs1000.load(tmp_path)
