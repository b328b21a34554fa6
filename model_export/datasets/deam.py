"""DEAM, the MediaEval Database for Emotional Analysis in Music (2013–2015) → clips.

Expected layout::

    <root>/MEMD_audio/<song_id>.mp3
    <root>/annotations/.../arousal.csv
    <root>/annotations/.../valence.csv

The two CSVs are the dynamic annotations averaged per song (in the release:
``annotations/annotations averaged per song/dynamic (per second annotations)/``). Their header is
``song_id,sample_15000ms,sample_15500ms,...`` up to the longest song; rows are ragged: a shorter song's
row ends early or carries trailing empty cells. Values are already on the [-1, 1] scale, so no
rescaling is applied (a hair outside is clipped, far outside is refused). If the CSV paths are not
given they are searched for under ``<root>/annotations`` (or ``<root>``); among several files of
that name, those under a path containing both "averaged" and "dynamic" win.

Label alignment (the same decision as for 1000 Songs): the rating sampled at ``t`` ms describes what
was heard up to ``t`` and labels the 500 ms frame ending at ``t``. The first label (15 000 ms) labels
``[14.5, 15.0)`` s, so ``offset_s = 14.5`` and frame ``k`` covers ``[14.5 + 0.5 k, 15.0 + 0.5 k)``.

Per song, the leading run of values present in *both* the arousal and the valence row is used
(their common length); anything after the first gap is ignored. Songs are skipped, with one warning
per reason, when their audio is missing or unreadable, when a CSV lacks their row, or when no value
is present; frames past the end of the audio file are dropped.
"""

from __future__ import annotations

from pathlib import Path

from model_export.datasets._common import clips_from_wide_csvs, find_file
from model_export.datasets.base import Clip

AUDIO_DIR = "MEMD_audio"
_PREFER = ("averaged", "dynamic")


def find_annotation_csvs(root: Path) -> tuple[Path, Path]:
    """Locate the per-song averaged dynamic ``arousal.csv`` and ``valence.csv`` under ``root``.

    Returns:
        The arousal and valence CSV paths.

    Raises:
        FileNotFoundError: if either is missing or ambiguous.
    """
    return _find(root, "arousal.csv"), _find(root, "valence.csv")


def _find(root: Path, name: str) -> Path:
    base = root / "annotations" if (root / "annotations").is_dir() else root
    return find_file(base, name, _PREFER)


def load(
    root: Path,
    arousal_csv: Path | None = None,
    valence_csv: Path | None = None,
    *,
    audio_dir: str = AUDIO_DIR,
    check_audio: bool = True,
) -> list[Clip]:
    """Load DEAM's dynamic per-song annotations as clips.

    Args:
        root: Dataset folder.
        arousal_csv: Averaged dynamic arousal CSV; searched for under ``root`` if not given.
        valence_csv: Averaged dynamic valence CSV; searched for under ``root`` if not given.
        audio_dir: Folder of ``<song_id>.mp3`` files, relative to ``root``.
        check_audio: Read each MP3's header to skip unreadable files and drop frames past the end.

    Returns:
        One clip per usable song with ``offset_s = 14.5``; ``group`` is the song id.

    Raises:
        FileNotFoundError: if the annotation CSVs cannot be found.
        ValueError: if the CSVs are malformed or a label is off the [-1, 1] scale.
    """
    root = Path(root)
    if arousal_csv is None:
        arousal_csv = _find(root, "arousal.csv")
    if valence_csv is None:
        valence_csv = _find(root, "valence.csv")
    audio_for = {p.stem: p for p in sorted((root / audio_dir).glob("*.mp3"))}
    return clips_from_wide_csvs(
        Path(arousal_csv),
        Path(valence_csv),
        audio_for,
        ragged=True,
        check_audio=check_audio,
        dataset="DEAM",
    )
