from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model_export.datasets import deam
from tests.datasets_fixtures import sample_header, write_audio, write_wide_csv

DYNAMIC = "annotations/annotations averaged per song/dynamic (per second annotations)"
HEADER = sample_header(15_000, 12)  # labels 15.0 ... 20.5 s


def _ramp(n: int, scale: float) -> list[float | None]:
    return [scale * k / 16 for k in range(n)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deam")
    for song in ("10", "11", "12", "13"):
        write_audio(root / "MEMD_audio" / f"{song}.mp3", 21.0, seed=int(song))
    arousal: dict[str, list[float | None]] = {
        "10": _ramp(12, 0.5),  # full length
        "11": _ramp(8, 0.5),  # ragged: 8 values then empty cells
        "12": _ramp(10, 0.5),  # valence row is shorter: common length 6
        "13": [None] * 12,  # nothing usable
        "14": _ramp(12, 0.5),  # no audio
    }
    valence: dict[str, list[float | None]] = {
        "10": _ramp(12, -0.5),
        "11": _ramp(8, -0.5),
        "12": _ramp(6, -0.5),
        "13": [None] * 12,
        "14": _ramp(12, -0.5),
    }
    write_wide_csv(root / DYNAMIC / "arousal.csv", HEADER, arousal)
    # Valence written without the trailing empty cells: rows simply end early.
    write_wide_csv(root / DYNAMIC / "valence.csv", HEADER, valence, pad_empty=False)
    # A per-rater folder elsewhere must not confuse the search.
    write_wide_csv(root / "annotations/annotations per each rater/arousal.csv", HEADER, {})
    return root


def test_ragged_rows_use_common_length(tree: Path) -> None:
    clips = {c.clip_id: c for c in deam.load(tree)}
    assert sorted(clips, key=int) == ["10", "11", "12"]
    assert clips["10"].num_frames == 12
    assert clips["11"].num_frames == 8
    assert clips["12"].num_frames == 6
    for clip in clips.values():
        assert clip.offset_s == 14.5
        assert clip.group == clip.clip_id


def test_end_aligned_values(tree: Path) -> None:
    clip = next(c for c in deam.load(tree) if c.clip_id == "11")
    # Frame k covers [14.5 + 0.5k, 15 + 0.5k) and carries the label sampled at 15000 + 500k ms.
    assert clip.targets[0].tolist() == [0.0, -0.0]
    assert clip.targets[7].tolist() == pytest.approx([0.5 * 7 / 16, -0.5 * 7 / 16])


def test_explicit_paths_and_skips(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        clips = deam.load(
            tree,
            arousal_csv=tree / DYNAMIC / "arousal.csv",
            valence_csv=tree / DYNAMIC / "valence.csv",
        )
    assert len(clips) == 3
    assert "(missing labels): 13" in caplog.text
    assert "(missing audio): 14" in caplog.text


def test_audio_shorter_than_labels_is_trimmed(tmp_path: Path) -> None:
    write_audio(tmp_path / "MEMD_audio" / "1.mp3", 17.0)
    write_wide_csv(tmp_path / "annotations" / "arousal.csv", HEADER, {"1": _ramp(12, 1.0)})
    write_wide_csv(tmp_path / "annotations" / "valence.csv", HEADER, {"1": _ramp(12, 1.0)})
    (clip,) = deam.load(tmp_path)
    assert clip.num_frames == 5  # (17.0 - 14.5) / 0.5


def test_ambiguous_csvs_raise(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        write_wide_csv(tmp_path / "annotations" / sub / "arousal.csv", HEADER, {})
        write_wide_csv(tmp_path / "annotations" / sub / "valence.csv", HEADER, {})
    with pytest.raises(FileNotFoundError, match="exactly one"):
        deam.load(tmp_path)
