"""Helpers that write tiny dataset trees in the real formats (audio is short noise, never real data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

#: Low rate keeps MP3 encoding of 45 s fixtures fast; the recipes only read headers.
FIXTURE_SR = 8_000


def write_audio(
    path: Path, seconds: float, fmt: str = "MP3", sample_rate: int = FIXTURE_SR, seed: int = 0
) -> Path:
    """Write ``seconds`` of quiet noise to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    signal = (0.05 * rng.standard_normal(round(seconds * sample_rate))).astype(np.float32)
    sf.write(str(path), signal, sample_rate, format=fmt)
    return path


def sample_header(first_ms: int, count: int, id_column: str = "song_id") -> list[str]:
    """``song_id,sample_15000ms,sample_15500ms,...`` as a list of cells."""
    return [id_column, *(f"sample_{first_ms + 500 * i}ms" for i in range(count))]


def write_wide_csv(
    path: Path,
    header: Sequence[str],
    rows: Mapping[str, Sequence[float | None]],
    *,
    pad_empty: bool = True,
) -> Path:
    """Write a wide per-song CSV; ``None`` is an empty cell.

    With ``pad_empty`` every row gets trailing empty cells up to the header's width (as DEAM's ragged
    rows do); otherwise short rows simply end early.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)]
    for song, values in rows.items():
        cells = ["" if v is None else repr(float(v)) for v in values]
        if pad_empty:
            cells += [""] * (len(header) - 1 - len(cells))
        lines.append(",".join([song, *cells]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
