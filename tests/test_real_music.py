from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model_export.real_music import PACKAGES, fetch, find_tracks, summarise, table
from model_export.testing import synth_music

SR = 22_050


def _deb(tmp: Path, package: str, files: dict[str, float]) -> Path:
    """Build a real .deb holding synthesised OGG files at the given paths (seconds each)."""
    tree = tmp / f"tree-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test fixture\n"
    )
    for i, (rel, seconds) in enumerate(files.items()):
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, synth_music(seconds, SR, seed=i), SR, format="OGG", subtype="VORBIS")
    deb = tmp / "cache" / "debs" / f"{package}_1.0_all.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True, capture_output=True
    )
    return deb


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    songs = "usr/share/games/fretsonfire/data/songs/muldjord"
    _deb(tmp, PACKAGES[0], {f"{songs}/storm/song.ogg": 21.0, f"{songs}/storm/guitar.ogg": 21.0})
    cues = "usr/share/scummvm/drascula/en"
    _deb(
        tmp,
        PACKAGES[1],
        {f"{cues}/track2.ogg": 22.0, f"{cues}/track10.ogg": 20.5, f"{cues}/track12.ogg": 9.0},
    )
    return fetch(tmp / "cache")


def test_fetch_unpacks_the_packages_once(unpacked: Path) -> None:
    stamps = sorted(unpacked.glob(".*.unpacked"))
    assert len(stamps) == 2
    before = [p.stat().st_mtime_ns for p in stamps]
    assert fetch(unpacked.parent) == unpacked  # already there: no download, no second unpack
    assert [p.stat().st_mtime_ns for p in stamps] == before


def test_tracks_mix_song_stems_and_skip_jingles(unpacked: Path) -> None:
    tracks = find_tracks(unpacked)
    assert [t.name for t in tracks] == ["fof/storm", "drascula/track2", "drascula/track10"]
    assert [p.name for p in tracks[0].files] == ["song.ogg", "guitar.ogg"]


def test_summary_and_table() -> None:
    def row(name: str, coll: str, a: float, v: float) -> dict[str, object]:
        return {
            "track": name,
            "collection": coll,
            "duration_s": 30.0,
            "gain_db": -3.0,
            "arousal_mean": a,
            "arousal_std": 0.1,
            "valence_mean": v,
            "valence_std": 0.05,
        }

    rows = [row("m1", "metal", 0.5, -0.2), row("m2", "metal", 0.3, -0.1), row("g1", "game", 0.4, 0.1)]
    rows.append(row("g2", "game", -0.2, 0.2))
    summary = summarise(rows)
    assert summary["collections"]["metal"]["arousal_mean"] == pytest.approx(0.4)
    # sorted names: "game" first; game over metal wins 1 of 4 pairs (0.4 > 0.3).
    assert summary["arousal_auc_first_over_second"] == pytest.approx(0.25)
    md = table(rows)
    assert md.index("| m1 |") < md.index("| g1 |") < md.index("| m2 |")  # by arousal, highest first
    assert "+0.500 ± 0.100" in md
    assert np.isfinite(summary["collections"]["game"]["valence_mean"])
