"""PMEmo (Zhang et al., 2018) → clips.

Expected layout::

    <root>/chorus/<musicId>.mp3
    <root>/annotations/dynamic_annotations.csv

The CSV has one row per song and label time, header ``musicId,frameTime,Arousal(mean),Valence(mean)``:
2 Hz ratings averaged over listeners, from ``frameTime`` 15.5 s on, on the [0, 1] scale. They are mapped
to [-1, 1] by ``2 x - 1`` (values a hair outside [0, 1] are clipped, far outside are refused).

Label alignment (the same decision as for 1000 Songs and DEAM): the rating at ``frameTime`` ``t``
describes what was heard up to ``t`` and labels the 500 ms frame ``[t - 0.5, t)``. A song whose first
label is at 15.5 s therefore has ``offset_s = 15.0``.

Irregular times are handled on the 0.5 s grid: each ``frameTime`` is rounded to the nearest multiple
of 0.5 s; rows more than 0.1 s off the grid, or with a missing value, are dropped; rows landing on the
same grid point are averaged. A song whose grid points are not consecutive is split at every gap
into separate clips (ids ``<musicId>_0``, ``<musicId>_1``, ...; one clip keeps the plain id), all in
the song's cross-validation group: each clip stays a contiguous sequence, nothing is invented for
the gaps, and no fold separates parts of one song. Songs whose audio is missing or unreadable are
skipped with a warning; frames past the end of the audio file are dropped.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from app.core.contract import HOP_S
from model_export.datasets._common import frames_in_audio, natural_key, to_unit_range
from model_export.datasets.base import Clip

log = logging.getLogger(__name__)

AUDIO_DIR = "chorus"
ANNOTATIONS_CSV = "annotations/dynamic_annotations.csv"
COLUMNS = ("musicId", "frameTime", "Arousal(mean)", "Valence(mean)")
#: Largest distance of a ``frameTime`` from the 0.5 s grid that is still rounded onto it.
GRID_TOLERANCE_S = 0.1


def read_annotations(csv_path: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """Read ``dynamic_annotations.csv`` onto the 0.5 s grid.

    Args:
        csv_path: The CSV file.

    Returns:
        Per music id, a mapping of grid index ``j`` (label time ``0.5 j`` s, labelling the frame
        ``[0.5 (j - 1), 0.5 j)``) to the (arousal, valence) pair on the original [0, 1] scale.

    Raises:
        ValueError: if a required column is missing.
    """
    sums: dict[str, dict[int, list[float]]] = defaultdict(dict)
    dropped = {"missing value": 0, "off the 0.5 s grid": 0}
    merged = 0
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in fields]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}; header is {fields}")
        for raw in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            try:
                t, a, v = (float(row[c]) for c in COLUMNS[1:])
            except ValueError:
                dropped["missing value"] += 1
                continue
            if not (math.isfinite(t) and math.isfinite(a) and math.isfinite(v)):
                dropped["missing value"] += 1
                continue
            j = round(t / HOP_S)
            if j < 1 or abs(t - j * HOP_S) > GRID_TOLERANCE_S:
                dropped["off the 0.5 s grid"] += 1
                continue
            cell = sums[row["musicId"]].setdefault(j, [0.0, 0.0, 0.0])
            merged += cell[2] > 0
            cell[0] += a
            cell[1] += v
            cell[2] += 1
    for reason, count in dropped.items():
        if count:
            log.warning("PMEmo: dropped %d annotation rows (%s)", count, reason)
    if merged:
        log.warning("PMEmo: averaged %d annotation rows that fell on an already used grid point", merged)
    return {song: {j: (s[0] / s[2], s[1] / s[2]) for j, s in grid.items()} for song, grid in sums.items()}


def consecutive_runs(indices: list[int]) -> list[list[int]]:
    """Split sorted grid indices into runs of consecutive integers."""
    runs: list[list[int]] = []
    for j in sorted(indices):
        if runs and j == runs[-1][-1] + 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    return runs


def load(root: Path, *, check_audio: bool = True, min_frames: int = 1) -> list[Clip]:
    """Load PMEmo's dynamic annotations as clips.

    Args:
        root: Dataset folder (holding ``chorus/`` and ``annotations/``).
        check_audio: Read each MP3's header to skip unreadable files and drop frames past the end.
        min_frames: Contiguous runs shorter than this (after trimming to the audio) are dropped.

    Returns:
        One clip per contiguous run of labels; ``group`` is the music id.

    Raises:
        FileNotFoundError: if the annotation CSV is missing.
        ValueError: if the CSV is malformed or a label is off the [0, 1] scale.
    """
    root = Path(root)
    csv_path = root / ANNOTATIONS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"PMEmo annotation file not found: {csv_path}")
    grid = read_annotations(csv_path)
    clips: list[Clip] = []
    skipped: dict[str, list[str]] = {"missing audio": [], "unreadable audio": [], "no usable frames": []}
    split = 0
    for song in sorted(grid, key=natural_key):
        audio = root / AUDIO_DIR / f"{song}.mp3"
        if not audio.is_file():
            skipped["missing audio"].append(song)
            continue
        runs = consecutive_runs(list(grid[song]))
        split += len(runs) > 1
        # Runs start on the 0.5 s grid, so one header read gives every run's frame budget.
        total = frames_in_audio(audio, 0.0) if check_audio else None
        if check_audio and total is None:
            skipped["unreadable audio"].append(song)
            continue
        made = 0
        for i, run in enumerate(runs):
            offset_s = (run[0] - 1) * HOP_S
            n = len(run) if total is None else min(len(run), total - (run[0] - 1))
            if n < max(1, min_frames):
                continue
            values = np.asarray([grid[song][j] for j in run[:n]], dtype=np.float32)
            clips.append(
                Clip(
                    clip_id=song if len(runs) == 1 else f"{song}_{i}",
                    audio_path=audio,
                    targets=to_unit_range(2.0 * values - 1.0, f"PMEmo song {song}"),
                    offset_s=offset_s,
                    group=song,
                )
            )
            made += 1
        if made == 0:
            skipped["no usable frames"].append(song)
    for reason, songs in skipped.items():
        if songs:
            log.warning("PMEmo: skipped %d songs (%s): %s", len(songs), reason, ", ".join(songs[:10]))
    if split:
        log.warning("PMEmo: %d songs have gaps in their label times and were split into several clips", split)
    return clips
