"""A job's output folder: part files written atomically, an errors file, and what is already done.

Layout of ``OUT/``::

    part-000000.parquet    (or .jsonl) one row per scored track, SCHEMA's columns
    part-000001.parquet
    _errors.jsonl          one line per failed attempt: id, path, status, code, message, at
    _summary.json          the last run's counts

The bookkeeping files start with ``_``, which pyarrow, pandas, Spark and DuckDB skip, so the folder
reads as one dataset: ``pyarrow.parquet.read_table("OUT")``.
A part is written to a hidden temporary name and renamed into place when complete, so a crash (or a
kill) leaves only whole parts: a rerun reads the ids of those parts and skips them, and redoes the
tracks of the part that was being filled. Parts are flushed every ``part_rows`` rows, so memory holds
one part's rows at most. The ids already done are kept as sorted 64-bit hashes: 8 bytes per track,
whatever the id's length (10⁷ tracks: 80 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.batch.scoring import Failure

__all__ = ["ERRORS", "SCHEMA", "SUMMARY", "DoneIds", "Format", "OutputFolder", "id_hash"]

Format = Literal["parquet", "jsonl"]

#: One row per track. The per-frame lists share the frame index: ``start_s[k]``, ``arousal[k]``, ...
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("offset_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("sample_rate", pa.int32()),
        ("input_gain_db", pa.float64()),
        ("num_frames", pa.int32()),
        ("arousal_mean", pa.float64()),
        ("arousal_std", pa.float64()),
        ("valence_mean", pa.float64()),
        ("valence_std", pa.float64()),
        ("quadrant", pa.string()),
        ("start_s", pa.list_(pa.float64())),
        ("arousal", pa.list_(pa.float32())),
        ("valence", pa.list_(pa.float32())),
    ]
)
_PART_GLOB = "part-*"
#: The errors file and the summary, inside the output folder.
ERRORS, SUMMARY = "_errors.jsonl", "_summary.json"


def id_hash(track_id: str) -> int:
    """The 64-bit hash a track id is remembered by (BLAKE2b: collisions need ~4·10⁹ ids)."""
    return int.from_bytes(hashlib.blake2b(track_id.encode(), digest_size=8).digest(), "little")


class DoneIds:
    """A set of track ids at 8 bytes each: a sorted array of hashes plus a small buffer of new ones."""

    _MERGE_AT = 1 << 16

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._sorted = np.unique(np.fromiter((id_hash(i) for i in ids), dtype=np.uint64))
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return int(self._sorted.size) + len(self._recent)

    def __contains__(self, track_id: object) -> bool:
        if not isinstance(track_id, str):
            return False
        h = id_hash(track_id)
        if h in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(h)))
        return i < self._sorted.size and int(self._sorted[i]) == h

    def add(self, track_id: str) -> None:
        """Remember one more id."""
        self._recent.add(id_hash(track_id))
        if len(self._recent) >= self._MERGE_AT:
            merged = np.concatenate([self._sorted, np.fromiter(self._recent, dtype=np.uint64)])
            self._sorted, self._recent = np.unique(merged), set()


class OutputFolder:
    """Write a job's parts and errors; read back what earlier runs finished.

    Args:
        root: The output folder (created).
        fmt: ``parquet`` or ``jsonl`` parts.
        part_rows: Rows per part file (memory holds one part).

    Example:
        >>> out = OutputFolder(Path("scores"), "parquet")
        >>> done = out.done_ids()
        >>> out.add(row); out.close()
    """

    def __init__(self, root: Path, fmt: Format = "parquet", part_rows: int = 1000) -> None:
        if part_rows < 1:
            raise ValueError(f"part_rows must be >= 1, got {part_rows}")
        self.root = root
        self.fmt = fmt
        self.part_rows = part_rows
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".part-*.tmp"):  # a part an earlier run was writing when it died
            stale.unlink()
        self._rows: list[dict[str, Any]] = []
        self._next = 1 + max((_part_number(p) for p in self._parts()), default=-1)
        self._errors = (root / ERRORS).open("a", encoding="utf-8")

    def done_ids(self) -> DoneIds:
        """The ids in the finished parts (of either format)."""
        return DoneIds(self.read_ids())

    def read_ids(self) -> Iterator[str]:
        """Every id in the finished parts, part by part."""
        for part in self._parts():
            if part.suffix == ".parquet":
                column = pq.read_table(part, columns=["id"]).column("id")
                yield from (str(v) for v in column.to_pylist())
            else:
                with part.open(encoding="utf-8") as lines:
                    yield from (str(json.loads(line)["id"]) for line in lines if line.strip())

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one row; a full part is written out."""
        self._rows.append(row)
        if len(self._rows) >= self.part_rows:
            self.flush()

    def record_failure(self, item: Failure) -> None:
        """Append one failure to ``_errors.jsonl`` (flushed at once: failures are never lost)."""
        line = {**asdict(item), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._errors.write(json.dumps(line) + "\n")
        self._errors.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part file, atomically."""
        if not self._rows:
            return
        name = f"part-{self._next:06d}.{self.fmt}"
        tmp = self.root / f".{name}.tmp"
        if self.fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA), tmp)
        else:
            with tmp.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in self._rows)
        with tmp.open("rb") as f:  # durable before it becomes visible
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)
        self._next += 1
        self._rows = []

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``_summary.json`` (atomically)."""
        tmp = self.root / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.root / SUMMARY)

    def close(self) -> None:
        """Flush the last part and close the errors file."""
        self.flush()
        self._errors.close()

    def _parts(self) -> list[Path]:
        return sorted(p for p in self.root.glob(_PART_GLOB) if p.suffix in (".parquet", ".jsonl"))


def _part_number(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1
