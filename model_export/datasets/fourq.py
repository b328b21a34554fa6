"""4Q audio emotion dataset (Panda, Malheiro and Paiva 2018) → clips with one static label each.

Expected layout (as in ``../shared/data/4q``)::

    <root>/Q1/<Song>.mp3 ... <root>/Q4/<Song>.mp3
    <root>/annotations.csv     Song,Quadrant
    <root>/metadata.csv        "Song","Artist","Title","Quadrant","PQuad",...,"GenresStr",...

Each clip (an AllMusic preview of about 30 s) carries ONE label for the whole clip, a Russell
quadrant: Q1 (+arousal, +valence), Q2 (+A, -V), Q3 (-A, -V), Q4 (-A, +V). The recipe turns the
quadrant into the *signs* of arousal and valence, written on every frame as ±1 with
``label_kind = "clip"``: these are not per-frame ratings, and training decides how a clip-level sign
becomes a loss (``model_export.train``). ``PQuad`` (the share of the clip's AllMusic mood tags that
agree with its quadrant, 0.5–1) is kept as ``confidence``.

Every clip's CV ``group`` is its artist (normalised: case and surrounding spaces), so no split puts
one artist on both sides; the frames are the clip's complete 500 ms windows from 0 s.

Clips are skipped, with one warning per reason, when the annotation and metadata files disagree on
the quadrant, the audio file is missing from its quadrant's folder or unreadable, or it holds less than
one frame. The audio, audio derived from it and its features are research data: never commit them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.datasets._common import frames_in_audio
from model_export.datasets.base import Clip

log = logging.getLogger(__name__)

ANNOTATIONS_CSV = "annotations.csv"
METADATA_CSV = "metadata.csv"
#: Signs of (arousal, valence) per Russell quadrant.
#: Frames of a 30 s preview, assumed for every clip when headers are not read (``check_audio=False``).
PREVIEW_FRAMES = 60
QUADRANT_SIGNS: Mapping[str, tuple[float, float]] = {
    "Q1": (1.0, 1.0),
    "Q2": (1.0, -1.0),
    "Q3": (-1.0, -1.0),
    "Q4": (-1.0, 1.0),
}


@dataclass(frozen=True)
class SongInfo:
    """What ``metadata.csv`` says about one clip.

    Attributes:
        song: The clip id (``MT…``).
        artist: Artist name as written.
        title: Song title.
        quadrant: ``Q1`` … ``Q4``.
        pquad: Share of the clip's mood tags that agree with its quadrant.
        genres: AllMusic genres, in the file's order.
    """

    song: str
    artist: str
    title: str
    quadrant: str
    pquad: float
    genres: tuple[str, ...]

    @property
    def group(self) -> str:
        """The CV group: the artist, case-folded."""
        return "artist:" + " ".join(self.artist.split()).casefold()


def read_metadata(root: Path) -> dict[str, SongInfo]:
    """Read ``metadata.csv`` (artist, quadrant, PQuad, genres per clip).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if a required column is missing, a quadrant is unknown or PQuad is not in [0, 1].
    """
    path = Path(root) / METADATA_CSV
    if not path.is_file():
        raise FileNotFoundError(f"4Q metadata file not found: {path}")
    out: dict[str, SongInfo] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"Song", "Artist", "Quadrant", "PQuad"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            song, quadrant = row["Song"].strip(), row["Quadrant"].strip()
            if quadrant not in QUADRANT_SIGNS:
                raise ValueError(f"{path}:{line}: unknown quadrant {quadrant!r} for {song}")
            try:
                pquad = float(row["PQuad"])
            except ValueError:
                raise ValueError(f"{path}:{line}: PQuad {row['PQuad']!r} is not a number") from None
            if not 0.0 <= pquad <= 1.0:
                raise ValueError(f"{path}:{line}: PQuad {pquad} outside [0, 1]")
            genres = tuple(g.strip() for g in (row.get("GenresStr") or "").split(";") if g.strip())
            out[song] = SongInfo(
                song=song,
                artist=row["Artist"].strip(),
                title=(row.get("Title") or "").strip(),
                quadrant=quadrant,
                pquad=pquad,
                genres=genres,
            )
    return out


def read_annotations(root: Path) -> dict[str, str]:
    """Read ``annotations.csv``: clip id → quadrant.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if a column is missing or a quadrant is unknown.
    """
    path = Path(root) / ANNOTATIONS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"4Q annotation file not found: {path}")
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"Song", "Quadrant"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected columns Song,Quadrant")
        for line, row in enumerate(reader, start=2):
            quadrant = row["Quadrant"].strip()
            if quadrant not in QUADRANT_SIGNS:
                raise ValueError(f"{path}:{line}: unknown quadrant {quadrant!r}")
            out[row["Song"].strip()] = quadrant
    return out


def load(root: Path, *, check_audio: bool = True) -> list[Clip]:
    """Load the 4Q clips as clip-labelled :class:`Clip` objects.

    Args:
        root: Dataset folder (``Q1/`` … ``Q4/``, ``annotations.csv``, ``metadata.csv``).
        check_audio: Read each MP3's header for its frame count (without it every clip is taken as
            :data:`PREVIEW_FRAMES`, a 30 s preview; for tests of the labels alone).

    Returns:
        One clip per usable song, sorted by id: targets ``(T, 2)`` of ±1 (the quadrant's signs) on
        every frame, ``label_kind = "clip"``, ``confidence = PQuad``, ``group`` the artist.

    Raises:
        FileNotFoundError: if either CSV is missing.
        ValueError: if the CSVs are malformed.
    """
    root = Path(root)
    quadrants = read_annotations(root)
    meta = read_metadata(root)
    skipped: dict[str, list[str]] = {
        "no metadata": [],
        "quadrant disagrees with metadata": [],
        "missing audio": [],
        "unreadable audio": [],
        "audio too short": [],
    }
    clips: list[Clip] = []
    for song in sorted(quadrants):
        quadrant = quadrants[song]
        info = meta.get(song)
        if info is None:
            skipped["no metadata"].append(song)
            continue
        if info.quadrant != quadrant:
            skipped["quadrant disagrees with metadata"].append(song)
            continue
        audio = root / quadrant / f"{song}.mp3"
        if not audio.is_file():
            skipped["missing audio"].append(song)
            continue
        frames = frames_in_audio(audio, 0.0) if check_audio else PREVIEW_FRAMES
        if frames is None:
            skipped["unreadable audio"].append(song)
            continue
        if frames == 0:
            skipped["audio too short"].append(song)
            continue
        signs = np.asarray(QUADRANT_SIGNS[quadrant], dtype=np.float32)
        clips.append(
            Clip(
                clip_id=song,
                audio_path=audio,
                targets=np.tile(signs, (frames, 1)),
                group=info.group,
                label_kind="clip",
                confidence=info.pquad,
            )
        )
    for reason, songs in skipped.items():
        if songs:
            log.warning("4Q: skipped %d clips (%s): %s", len(songs), reason, ", ".join(songs[:10]))
    return clips


def quadrant_of(clip: Clip) -> str:
    """The quadrant a 4Q clip is labelled with (from the signs of its targets)."""
    a, v = (bool(x > 0) for x in clip.targets[0])
    return next(q for q, s in QUADRANT_SIGNS.items() if (s[0] > 0, s[1] > 0) == (a, v))
