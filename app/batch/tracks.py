"""What a batch job scores: tracks from folders, path lists and manifests, streamed.

A job's inputs are any mix of

- a **folder**: every file under it (recursively) with an audio extension, in sorted order, with the
  path relative to the folder as the track's id (stable across reruns, so resuming works);
- a **manifest**: ``.csv`` (a header row) or ``.jsonl`` (one object per line) with ``path`` and
  optionally ``id``, ``offset_s``, ``duration_s``; relative paths are relative to the manifest;
- a **path list**: ``.txt``, one path per line (``#`` comments and blank lines skipped);
- an **audio file**: itself, with its path as given as the id.

Everything is a generator: a catalogue of 10⁸ lines is never held in memory. A line that cannot be
turned into a track (no path, an offset that is not a number) is yielded as an :class:`InputProblem`
so that the job records it like any other per-track failure instead of stopping.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AUDIO_EXTENSIONS", "InputProblem", "Track", "count_tracks", "iter_tracks"]

#: Extensions picked up when walking a folder (what libsndfile decodes).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
_MANIFESTS = {".csv", ".jsonl", ".ndjson"}


@dataclass(frozen=True)
class Track:
    """One track to score.

    Attributes:
        id: The caller's id (unique within a job; the key for resuming).
        path: The audio file.
        offset_s: Start of the range to analyse, seconds.
        duration_s: Length of the range (``None``: to the end).
    """

    id: str
    path: str
    offset_s: float = 0.0
    duration_s: float | None = None


@dataclass(frozen=True)
class InputProblem:
    """An input line that is not a track: recorded as a failure with code ``invalid_request``.

    Attributes:
        id: The line's id (or ``<source>:<line>`` when it has none).
        path: The line's path, if it has one.
        message: What is wrong.
    """

    id: str
    path: str
    message: str


Item = Track | InputProblem


def iter_tracks(sources: Iterable[str | os.PathLike[str]]) -> Iterator[Item]:
    """Every track of every source, in order (see the module docstring for the source kinds).

    Raises:
        FileNotFoundError: If a source does not exist (a job's inputs are checked before it starts;
            a missing audio file *inside* a manifest is a per-track failure instead).
    """
    for source in sources:
        path = Path(source)
        if path.is_dir():
            yield from _walk(path)
        elif not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        elif path.suffix.lower() in _MANIFESTS:
            yield from _manifest(path)
        elif path.suffix.lower() == ".txt":
            yield from _path_list(path)
        else:
            yield Track(id=str(source), path=str(path))


def count_tracks(sources: Iterable[str | os.PathLike[str]]) -> int:
    """How many items :func:`iter_tracks` yields (one streaming pass: for the progress bar's ETA)."""
    return sum(1 for _ in iter_tracks(sources))


def _walk(root: Path) -> Iterator[Item]:
    # os.walk with sorted names: a deterministic order, and memory bounded by one directory's listing.
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                full = Path(folder) / name
                yield Track(id=full.relative_to(root).as_posix(), path=str(full))


def _path_list(path: Path) -> Iterator[Item]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield Track(id=entry, path=str(_resolve(path, entry)))


def _manifest(path: Path) -> Iterator[Item]:
    with path.open(encoding="utf-8", newline="") as f:
        rows: Iterator[Any]
        if path.suffix.lower() == ".csv":
            rows = iter(csv.DictReader(f))
        else:
            rows = (line for line in f if line.strip())
        for number, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
            yield _manifest_item(path, number, row)


def _manifest_item(manifest: Path, number: int, row: Any) -> Item:
    where = f"{manifest.name}:{number}"
    if isinstance(row, str):
        try:
            row = json.loads(row)
        except ValueError as exc:
            return InputProblem(where, "", f"{where}: not a JSON object ({exc})")
    if not isinstance(row, dict):
        return InputProblem(where, "", f"{where}: not a JSON object")
    raw_path = row.get("path")
    raw_id = row.get("id")
    ident = str(raw_id) if raw_id not in (None, "") else (str(raw_path) if raw_path else where)
    if not isinstance(raw_path, str) or not raw_path:
        return InputProblem(ident, "", f"{where}: no 'path'")
    try:
        offset = _number(row.get("offset_s"), "offset_s", default=0.0)
        duration = _number(row.get("duration_s"), "duration_s", default=None)
    except ValueError as exc:
        return InputProblem(ident, str(_resolve(manifest, raw_path)), f"{where}: {exc}")
    return Track(
        id=ident, path=str(_resolve(manifest, raw_path)), offset_s=offset or 0.0, duration_s=duration
    )


def _number(value: Any, name: str, *, default: float | None) -> float | None:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _resolve(listing: Path, entry: str) -> Path:
    candidate = Path(entry).expanduser()
    return candidate if candidate.is_absolute() else listing.parent / candidate
