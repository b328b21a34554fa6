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


#: The header of 4Q's metadata.csv, exactly as distributed (every field quoted).
FOURQ_METADATA_HEADER = (
    "Song",
    "Artist",
    "Title",
    "Quadrant",
    "PQuad",
    "MoodsTotal",
    "Moods",
    "MoodsFoundStr",
    "MoodsStr",
    "MoodsStrSplit",
    "Genres",
    "GenresStr",
    "Sample",
)


def write_fourq_tree(
    root: Path,
    rows: Sequence[tuple[str, str, str, float, str]],
    *,
    audio: Mapping[str, np.ndarray] | None = None,
    sample_rate: int = FIXTURE_SR,
    seconds: float = 3.2,
    metadata_quadrant: Mapping[str, str] | None = None,
) -> Path:
    """Write a 4Q tree (``Q1/…Q4/<Song>.mp3``, ``annotations.csv``, ``metadata.csv``) in the real layout.

    Args:
        root: Folder to write into.
        rows: ``(song, artist, quadrant, pquad, genres)`` per clip; ``genres`` as in ``GenresStr``.
        audio: Samples per song (mono, ``sample_rate``); songs without get ``seconds`` of quiet noise.
        sample_rate: Rate of the MP3 files.
        seconds: Length of the noise clips.
        metadata_quadrant: Songs whose metadata row names another quadrant than annotations.csv.
    """
    ann = ["Song,Quadrant"]
    meta = [",".join(f'"{h}"' for h in FOURQ_METADATA_HEADER)]
    for i, (song, artist, quadrant, pquad, genres) in enumerate(rows):
        path = root / quadrant / f"{song}.mp3"
        if audio is not None and song in audio:
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), audio[song], sample_rate, format="MP3")
        else:
            write_audio(path, seconds, sample_rate=sample_rate, seed=i)
        ann.append(f"{song},{quadrant}")
        q = (metadata_quadrant or {}).get(song, quadrant)
        cells = [song, artist, f"Title {i}", q, repr(pquad), "4", "3", "a; b; c", "A; B; C; D", "A; B; C; D"]
        cells += [str(len(genres.split(";"))), genres, "1"]
        meta.append(",".join(f'"{c}"' for c in cells))
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.csv").write_text("\n".join(ann) + "\n", encoding="utf-8")
    (root / "metadata.csv").write_text("\n".join(meta) + "\n", encoding="utf-8")
    return root
