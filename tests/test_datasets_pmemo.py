from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model_export.datasets import pmemo
from tests.datasets_fixtures import write_audio


def _write_csv(path: Path, rows: list[tuple[str, float, float | str, float | str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["musicId,frameTime,Arousal(mean),Valence(mean)"]
    lines += [f"{m},{t},{a},{v}" for m, t, a, v in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pmemo")
    for song in ("1", "4", "7", "9"):
        write_audio(root / "chorus" / f"{song}.mp3", 22.0 if song != "9" else 17.2, seed=int(song))
    rows: list[tuple[str, float, float | str, float | str]] = []
    # Song 1: regular 2 Hz from 15.5 s, 10 labels, arousal k/16, valence 1 - k/16.
    rows += [("1", 15.5 + 0.5 * k, k / 16, 1 - k / 16) for k in range(10)]
    # Song 4: jittered times, a duplicate, a far-off time and a missing value; a gap at 18.0 s.
    rows += [
        ("4", 15.52, 0.25, 0.75),
        ("4", 15.98, 0.5, 0.5),
        ("4", 16.0, 0.75, 0.25),  # same grid point as 15.98: averaged to 0.625 / 0.375
        ("4", 16.5, 1.0, 0.0),
        ("4", 16.77, 0.0, 0.0),  # 0.23 s off the grid: dropped
        ("4", 17.0, "", 0.5),  # missing arousal: dropped
        ("4", 17.5, 0.5, 0.5),
        ("4", 18.5, 0.0, 1.0),
        ("4", 19.0, 0.0, 1.0),
    ]
    rows += [("5", 15.5, 0.5, 0.5)]  # no audio
    rows += [("9", 15.5 + 0.5 * k, 0.5, 0.5) for k in range(6)]  # audio ends at 17.2 s
    # Rows need not be sorted.
    rows.reverse()
    _write_csv(root / pmemo.ANNOTATIONS_CSV, rows)
    return root


def test_regular_song_alignment_and_scale(tree: Path) -> None:
    clip = next(c for c in pmemo.load(tree) if c.clip_id == "1")
    assert clip.offset_s == 15.0  # label at 15.5 s labels the frame [15.0, 15.5)
    assert clip.num_frames == 10
    assert clip.group == "1"
    assert clip.targets[0].tolist() == [-1.0, 1.0]  # 2 * 0 - 1, 2 * 1 - 1
    assert clip.targets[8].tolist() == pytest.approx([2 * 8 / 16 - 1, 2 * (1 - 8 / 16) - 1])


def test_irregular_times_rounded_merged_and_split(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        clips = {c.clip_id: c for c in pmemo.load(tree)}
    first, second = clips["4_0"], clips["4_1"]
    assert first.group == second.group == "4"
    # 16.77 is off the grid and 17.0 lost its arousal, so 15.5-16.5 s is one run, 17.5 s a second
    # and 18.5-19.0 s a third.
    assert first.offset_s == 15.0
    assert first.num_frames == 3
    assert first.targets[:, 0].tolist() == pytest.approx([2 * 0.25 - 1, 2 * 0.625 - 1, 2 * 1.0 - 1])
    assert first.targets[:, 1].tolist() == pytest.approx([2 * 0.75 - 1, 2 * 0.375 - 1, -1.0])
    assert second.offset_s == 17.0
    assert second.num_frames == 1
    third = clips["4_2"]
    assert third.offset_s == 18.0
    assert third.targets.tolist() == [[-1.0, 1.0], [-1.0, 1.0]]
    assert "off the 0.5 s grid" in caplog.text
    assert "missing value" in caplog.text
    assert "averaged 1" in caplog.text


def test_skips_and_trims(tree: Path) -> None:
    clips = {c.clip_id: c for c in pmemo.load(tree)}
    assert "5" not in clips
    assert clips["9"].num_frames == 4  # floor(17.2 / 0.5) = 34 frames in the file, minus 30 before 15.0
    assert len(pmemo.load(tree, min_frames=2)) == 4  # the one-frame run 4_1 is dropped


def test_missing_column_raises(tmp_path: Path) -> None:
    path = tmp_path / pmemo.ANNOTATIONS_CSV
    path.parent.mkdir(parents=True)
    path.write_text("musicId,frameTime,Arousal(mean)\n1,15.5,0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Valence"):
        pmemo.load(tmp_path)


def test_consecutive_runs() -> None:
    assert pmemo.consecutive_runs([5, 3, 4, 8, 10, 9]) == [[3, 4, 5], [8, 9, 10]]
    assert pmemo.consecutive_runs([]) == []
