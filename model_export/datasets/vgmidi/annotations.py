"""VGMIDI's two annotation rounds → per-measure arousal and valence, averaged over listeners.

Each JSON file is one round with ``pieces`` (``pieceN`` → ``name``, ``midi`` file name, ``measures``,
``duration`` in seconds of the audio rendition the listeners heard) and ``annotations`` (``pieceN_K`` →
one listener: ``valence`` and ``arousal`` lists, one value per measure, on [-1, 1]). Piece ids restart
in each file, so a piece is keyed by (file, id). Quirks handled: listener entries whose piece has no
metadata are ignored; entries one value longer than ``measures`` are cut; entries of any other wrong
length are ignored.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core.types import FloatArray
from model_export.datasets._common import to_unit_range

log = logging.getLogger(__name__)

ANNOTATION_FILES = ("annotations/vgmidi_raw_1.json", "annotations/vgmidi_raw_2.json")


@dataclass(frozen=True, eq=False)
class Piece:
    """One annotated piece of one annotation round.

    Attributes:
        key: ``<annotation file stem>/<piece id>``, unique across rounds.
        midi: MIDI file name under ``<root>/midi``.
        name: Title.
        measures: Number of annotated measures M.
        duration_s: Length in seconds of the rendition the listeners heard, as stored.
        arousal: ``(M,)`` mean arousal over listeners, [-1, 1].
        valence: ``(M,)`` mean valence over listeners, [-1, 1].
        listeners: Number of listener entries averaged.
    """

    key: str
    midi: str
    name: str
    measures: int
    duration_s: float
    arousal: FloatArray = field(repr=False)
    valence: FloatArray = field(repr=False)
    listeners: int


def read_pieces(root: Path) -> list[Piece]:
    """Parse both annotation rounds into per-measure labels averaged over listeners.

    Args:
        root: VGMIDI folder.

    Returns:
        Annotated pieces in file, then piece-number order; pieces without any valid listener entry
        are left out (with a warning).

    Raises:
        FileNotFoundError: if an annotation file is missing.
        ValueError: if a label is off the [-1, 1] scale.
    """
    pieces: list[Piece] = []
    for rel in ANNOTATION_FILES:
        path = Path(root) / rel
        data = json.loads(path.read_text(encoding="utf-8"))
        meta: dict[str, dict[str, object]] = data["pieces"]
        entries: dict[str, list[tuple[list[float], list[float]]]] = {pid: [] for pid in meta}
        orphans: set[str] = set()
        orphan_entries = cut = bad = 0
        for entry_id, entry in data["annotations"].items():
            pid = entry_id.rsplit("_", 1)[0]
            if pid not in meta:
                orphans.add(pid)
                orphan_entries += 1
                continue
            m = _as_int(meta[pid]["measures"])
            arousal, valence = list(entry.get("arousal") or []), list(entry.get("valence") or [])
            if len(arousal) == m + 1 and len(valence) == m + 1:
                # At t == duration the tool's floor(t / duration * M) is M: a slot past the end.
                arousal, valence = arousal[:m], valence[:m]
                cut += 1
            if len(arousal) != m or len(valence) != m or not _all_numbers(arousal + valence):
                bad += 1
                continue
            entries[pid].append((arousal, valence))
        if orphan_entries:
            log.warning(
                "VGMIDI %s: ignored %d listener entries of pieces without metadata (%s)",
                path.name,
                orphan_entries,
                ", ".join(sorted(orphans, key=_piece_number)),
            )
        if cut:
            log.info("VGMIDI %s: cut %d listener entries one value too long", path.name, cut)
        if bad:
            log.warning(
                "VGMIDI %s: ignored %d listener entries of the wrong length or with non-numbers",
                path.name,
                bad,
            )
        for pid in sorted(meta, key=_piece_number):
            info = meta[pid]
            if _as_int(info["measures"]) < 1:
                log.warning("VGMIDI %s: %s declares no measures; skipped", path.name, pid)
                continue
            if not entries[pid]:
                log.warning("VGMIDI %s: %s has no usable listener entry; skipped", path.name, pid)
                continue
            values = np.asarray(entries[pid], dtype=np.float64)  # (listeners, 2, M)
            mean = to_unit_range(values.mean(axis=0).astype(np.float32), f"VGMIDI {path.stem}/{pid}")
            pieces.append(
                Piece(
                    key=f"{path.stem}/{pid}",
                    midi=str(info["midi"]),
                    name=str(info.get("name", pid)),
                    measures=_as_int(info["measures"]),
                    duration_s=float(str(info["duration"])),
                    arousal=mean[0],
                    valence=mean[1],
                    listeners=len(entries[pid]),
                )
            )
    return pieces


def _as_int(value: object) -> int:
    return int(str(value))


def _all_numbers(values: Iterable[object]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _piece_number(pid: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", pid)
    return (int(digits) if digits else -1, pid)
