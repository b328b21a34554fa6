"""Helpers shared by the dataset recipes: the frame grid, wide per-song CSVs, audio length checks."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from app.core.audio import probe
from app.core.contract import HOP_S
from app.core.errors import ServiceError
from app.core.features import frames_in_duration
from app.core.types import FloatArray
from model_export.datasets.base import Clip

log = logging.getLogger(__name__)

#: The contract's frame hop in milliseconds, the unit of the published annotation files' columns.
HOP_MS = round(HOP_S * 1000)
#: Labels a little outside [-1, 1] (rounding in the published files) are clipped; beyond this they
#: signal a wrong scale and are refused.
SCALE_TOLERANCE = 0.05

_SAMPLE_COLUMN = re.compile(r"^sample_(\d+)ms$")


def read_wide_csv(path: Path) -> tuple[list[int], dict[str, FloatArray]]:
    """Read a per-song continuous-annotation CSV (``song_id,sample_15000ms,sample_15500ms,...``).

    Rows may be ragged (fewer cells than the header, or trailing empty cells); missing and empty
    cells become NaN so every row has one value per sample column.

    Args:
        path: The CSV file.

    Returns:
        The sample times in milliseconds (from the header) and a mapping of song id to values.

    Raises:
        ValueError: if the header does not name ``sample_<ms>ms`` columns after the id column.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [cell.strip() for cell in next(reader)]
        times_ms: list[int] = []
        for name in header[1:]:
            match = _SAMPLE_COLUMN.match(name)
            if match is None:
                if name == "":  # a trailing comma in the header
                    continue
                raise ValueError(f"{path}: unexpected column {name!r}; expected sample_<ms>ms")
            times_ms.append(int(match.group(1)))
        rows: dict[str, FloatArray] = {}
        for cells in reader:
            if not cells or not cells[0].strip():
                continue
            values = np.full(len(times_ms), np.nan, dtype=np.float32)
            for i, cell in enumerate(cells[1 : len(times_ms) + 1]):
                text = cell.strip()
                if text:
                    values[i] = float(text)
            rows[_song_id(cells[0])] = values
    return times_ms, rows


def _song_id(cell: str) -> str:
    text = cell.strip()
    # Some exports write integer ids as floats ("2.0"); both must name the same song.
    try:
        as_float = float(text)
    except ValueError:
        return text
    return str(int(as_float)) if as_float.is_integer() else text


def check_grid(times_ms: list[int], path: Path) -> None:
    """Refuse sample columns that are not consecutive 500 ms steps.

    Raises:
        ValueError: if the header's sample times are empty or not spaced by 500 ms.
    """
    if not times_ms:
        raise ValueError(f"{path}: no sample_<ms>ms columns")
    steps = np.diff(np.asarray(times_ms))
    if np.any(steps != HOP_MS):
        raise ValueError(f"{path}: sample columns must be 500 ms apart, got steps {sorted(set(steps))}")
    if times_ms[0] < HOP_MS:
        raise ValueError(f"{path}: first sample at {times_ms[0]} ms; no complete frame ends there")


def end_aligned_offset_s(first_label_ms: int) -> float:
    """Start of the frame that ends at the first label's time (labels rate what was heard so far)."""
    return (first_label_ms - HOP_MS) / 1000.0


def leading_finite(values: FloatArray) -> int:
    """Length of the run of finite values at the start of ``values``."""
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else int(values.size)


def to_unit_range(values: FloatArray, what: str) -> FloatArray:
    """Clip labels to [-1, 1], refusing values that are clearly on another scale.

    Raises:
        ValueError: if a value lies more than :data:`SCALE_TOLERANCE` outside [-1, 1].
    """
    worst = float(np.max(np.abs(values))) if values.size else 0.0
    if worst > 1.0 + SCALE_TOLERANCE:
        raise ValueError(f"{what}: label {worst:.3f} is outside [-1, 1]; wrong scale?")
    return np.clip(values, -1.0, 1.0).astype(np.float32)


def frames_in_audio(path: Path, offset_s: float) -> int | None:
    """Complete 500 ms frames the audio file holds after ``offset_s``, from its header only.

    Returns:
        The frame count, or ``None`` if the file cannot be read as audio.
    """
    try:
        duration = probe(path).duration_s
    except ServiceError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return frames_in_duration(duration - offset_s)


def find_file(root: Path, name: str, prefer: tuple[str, ...] = ()) -> Path:
    """Find the one file called ``name`` under ``root``.

    Args:
        root: Folder to search recursively.
        name: Exact file name.
        prefer: Path fragments (case-insensitive); among several matches, those containing all of
            them win.

    Returns:
        The matching path.

    Raises:
        FileNotFoundError: if there is no match, or several equally good ones.
    """
    found = sorted(root.rglob(name))
    if len(found) > 1 and prefer:
        preferred = [p for p in found if all(frag.lower() in str(p).lower() for frag in prefer)]
        found = preferred or found
    if len(found) != 1:
        detail = ", ".join(str(p) for p in found) or "none"
        raise FileNotFoundError(f"expected exactly one {name} under {root}, found: {detail}")
    return found[0]


def natural_key(clip_id: str) -> tuple[int, int, str]:
    """Sort key putting numeric ids in numeric order, before any non-numeric ones."""
    return (0, int(clip_id), "") if clip_id.isdigit() else (1, 0, clip_id)


def clips_from_wide_csvs(
    arousal_csv: Path,
    valence_csv: Path,
    audio_for: dict[str, Path],
    *,
    ragged: bool,
    check_audio: bool,
    dataset: str,
) -> list[Clip]:
    """Turn a pair of per-song arousal/valence CSVs (labels already on [-1, 1]) into clips.

    Labels are end-aligned: the value at ``t`` ms labels the frame ``[t - 500, t)`` ms, so frame 0
    starts 500 ms before the first sample column.

    Args:
        arousal_csv: Wide arousal CSV (``song_id,sample_<ms>ms,...``).
        valence_csv: Wide valence CSV with the same sample columns.
        audio_for: Audio file of each song id (files may be missing: those songs are skipped).
        ragged: If true, a song keeps the leading run of values that both its rows have (rows of
            different songs may differ in length); if false, any missing value skips the song.
        check_audio: Read each file's header; skip unreadable files and drop frames the audio does
            not fully cover.
        dataset: Name used in log messages.

    Returns:
        Clips in natural id order.

    Raises:
        ValueError: if the two CSVs have different or malformed sample columns, or a label is off
            the [-1, 1] scale.
    """
    times_a, rows_a = read_wide_csv(arousal_csv)
    times_v, rows_v = read_wide_csv(valence_csv)
    check_grid(times_a, arousal_csv)
    if times_a[: len(times_v)] != times_v[: len(times_a)] or times_a[0] != times_v[0]:
        raise ValueError(f"{arousal_csv} and {valence_csv} have different sample columns")
    offset_s = end_aligned_offset_s(times_a[0])
    skipped: dict[str, list[str]] = {
        "no valence row": [],
        "no arousal row": [],
        "missing labels": [],
        "missing audio": [],
        "unreadable audio": [],
        "audio too short": [],
    }
    trimmed = 0
    clips: list[Clip] = []
    skipped["no arousal row"] = sorted(set(rows_v) - set(rows_a), key=natural_key)
    for song in sorted(rows_a, key=natural_key):
        if song not in rows_v:
            skipped["no valence row"].append(song)
            continue
        a, v = rows_a[song], rows_v[song]
        if ragged:
            n = min(leading_finite(a), leading_finite(v))
        else:
            n = min(a.size, v.size) if np.all(np.isfinite(a)) and np.all(np.isfinite(v)) else 0
        if n == 0:
            skipped["missing labels"].append(song)
            continue
        audio = audio_for.get(song)
        if audio is None or not audio.is_file():
            skipped["missing audio"].append(song)
            continue
        if check_audio:
            available = frames_in_audio(audio, offset_s)
            if available is None:
                skipped["unreadable audio"].append(song)
                continue
            if available == 0:
                skipped["audio too short"].append(song)
                continue
            if available < n:
                trimmed += 1
                n = available
        targets = np.stack([a[:n], v[:n]], axis=1)
        clips.append(
            Clip(
                clip_id=song,
                audio_path=audio,
                targets=to_unit_range(targets, f"{dataset} song {song}"),
                offset_s=offset_s,
                group=song,
            )
        )
    for reason, songs in skipped.items():
        if songs:
            log.warning("%s: skipped %d songs (%s): %s", dataset, len(songs), reason, ", ".join(songs[:10]))
    if trimmed:
        log.warning(
            "%s: %d songs' audio ends before their last label; those frames dropped", dataset, trimmed
        )
    return clips
