from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from model_export.datasets import fourq, registry
from model_export.splits import group_folds
from tests.datasets_fixtures import write_audio, write_fourq_tree

ROWS = [
    ("MT0000000001", "The Band", "Q1", 0.75, "Pop/Rock"),
    ("MT0000000002", "the band ", "Q2", 0.6, "Pop/Rock; Electronic"),  # same artist, other spelling
    ("MT0000000003", "Singer", "Q3", 1.0, "Jazz"),
    ("MT0000000004", "Duo", "Q4", 0.5, "Country; Folk"),
    ("MT0000000005", "Duo", "Q4", 0.8, "Country"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fourq_tree(tmp_path_factory.mktemp("4q"), ROWS)


def test_quadrants_become_clip_level_signs_with_confidence_and_artist_groups(tree: Path) -> None:
    clips = {c.clip_id: c for c in fourq.load(tree)}
    assert sorted(clips) == [r[0] for r in ROWS]
    expected = {"Q1": (1, 1), "Q2": (1, -1), "Q3": (-1, -1), "Q4": (-1, 1)}
    for song, _, quadrant, pquad, _ in ROWS:
        clip = clips[song]
        assert clip.label_kind == "clip"
        assert clip.confidence == pytest.approx(pquad)
        assert clip.audio_path == tree / quadrant / f"{song}.mp3"
        assert clip.offset_s == 0.0
        assert clip.num_frames == 6  # 3.2 s: six complete 500 ms frames
        np.testing.assert_array_equal(clip.targets, np.tile(expected[quadrant], (6, 1)).astype(np.float32))
        assert fourq.quadrant_of(clip) == quadrant
    assert clips["MT0000000001"].group == clips["MT0000000002"].group == "artist:the band"
    assert clips["MT0000000004"].group == clips["MT0000000005"].group


def test_folds_never_split_an_artist(tree: Path) -> None:
    clips = fourq.load(tree)
    for fold in group_folds([c.group for c in clips], 3):
        groups = {clips[i].group for i in fold}
        for other in set(range(len(clips))) - set(fold):
            assert clips[other].group not in groups


def test_metadata_gives_artist_pquad_and_genres(tree: Path) -> None:
    meta = fourq.read_metadata(tree)
    info = meta["MT0000000002"]
    assert (info.artist, info.quadrant, info.pquad) == ("the band", "Q2", 0.6)
    assert info.genres == ("Pop/Rock", "Electronic")


def test_clips_without_usable_audio_or_with_disagreeing_labels_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [*ROWS, ("MT0000000006", "X", "Q1", 0.7, "Rap"), ("MT0000000007", "Y", "Q2", 0.7, "Rap")]
    root = write_fourq_tree(tmp_path, rows, metadata_quadrant={"MT0000000005": "Q1"})
    (root / "Q1" / "MT0000000006.mp3").write_bytes(b"not an mp3 at all" * 100)
    (root / "Q2" / "MT0000000007.mp3").unlink()
    (root / "Q3" / "MT0000000003.mp3").unlink()
    write_audio(root / "Q3" / "MT0000000003.mp3", 0.3)  # under one frame
    with caplog.at_level(logging.WARNING):
        clips = fourq.load(root)
    assert [c.clip_id for c in clips] == ["MT0000000001", "MT0000000002", "MT0000000004"]
    text = caplog.text
    assert "(quadrant disagrees with metadata): MT0000000005" in text
    assert "(unreadable audio): MT0000000006" in text
    assert "(missing audio): MT0000000007" in text
    assert "(audio too short): MT0000000003" in text


def test_without_reading_audio_every_clip_is_a_preview(tree: Path) -> None:
    assert {c.num_frames for c in fourq.load(tree, check_audio=False)} == {fourq.PREVIEW_FRAMES}


@pytest.mark.parametrize(
    ("file", "text", "error"),
    [
        ("annotations.csv", "Song,Quadrant\nMT1,Q5\n", "unknown quadrant"),
        ("annotations.csv", "Song;Quadrant\nMT1;Q1\n", "expected columns"),
        ("metadata.csv", '"Song","Artist","Quadrant","PQuad"\n"MT1","A","Q1","1.5"\n', "outside"),
        ("metadata.csv", '"Song","Artist","Quadrant","PQuad"\n"MT1","A","Q1","n/a"\n', "not a number"),
        ("metadata.csv", '"Song","Artist","Quadrant"\n"MT1","A","Q1"\n', "missing columns"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, file: str, text: str, error: str) -> None:
    root = write_fourq_tree(tmp_path, ROWS[:1])
    (root / file).write_text(text)
    with pytest.raises(ValueError, match=error):
        fourq.load(root)


def test_missing_files_are_named(tmp_path: Path) -> None:
    root = write_fourq_tree(tmp_path, ROWS[:1])
    (root / "metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata"):
        fourq.load(root)


def test_registered_as_a_recipe(tree: Path) -> None:
    assert "fourq" in registry.RECIPES
    assert len(registry.load("fourq", tree)) == len(ROWS)
