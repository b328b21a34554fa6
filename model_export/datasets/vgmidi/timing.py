"""When each annotated "measure" happened: MIDI tempo maps, the annotation tool's timeline, frame labels.

``timing="tool"`` (default) reproduces the annotation tool: it stored the listener's cursor at audio
time ``t`` into index ``floor(t / duration * measures)``, so the "measures" are equal slices of the
rendition's length whatever the tempo. ``timing="tempo_map"`` treats index ``m`` as the quarter notes
``[4 m, 4 m + 4)`` through the MIDI's tempo map instead. See the package docstring for the details.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mido
import numpy as np
import numpy.typing as npt

from app.core.contract import HOP_S
from app.core.features import frames_in_duration
from app.core.types import Float64Array, FloatArray, Int64Array
from model_export.datasets.vgmidi.annotations import Piece

Timing = Literal["tool", "tempo_map"]

#: Quarter notes per annotated "measure", whatever the time signature.
QUARTERS_PER_MEASURE = 4
#: MIDI's default tempo (120 BPM) in microseconds per quarter note, until the first set_tempo.
DEFAULT_TEMPO = 500_000


@dataclass(frozen=True)
class TempoMap:
    """A MIDI file's tick → seconds mapping.

    Attributes:
        ticks_per_beat: Ticks per quarter note.
        change_ticks: Ticks at which a tempo takes effect, starting with 0, ascending.
        tempos: Microseconds per quarter note from each change on.
        change_seconds: Time in seconds of each change.
        end_tick: Tick of the file's last event (end of track included).
    """

    ticks_per_beat: int
    change_ticks: Int64Array
    tempos: Float64Array
    change_seconds: Float64Array
    end_tick: int

    def seconds(self, ticks: npt.ArrayLike) -> Float64Array:
        """Convert absolute ticks to seconds."""
        t = np.asarray(ticks, dtype=np.float64)
        i = np.searchsorted(self.change_ticks, t, side="right") - 1
        i = np.clip(i, 0, None)
        return np.asarray(
            self.change_seconds[i] + (t - self.change_ticks[i]) * self.tempos[i] / self.ticks_per_beat / 1e6
        )

    @property
    def length_s(self) -> float:
        """Time of the file's last event in seconds."""
        return float(self.seconds(self.end_tick))


def read_tempo_map(midi_path: Path) -> TempoMap:
    """Read a MIDI file's tempo changes (from all tracks: tempo is global in type 0/1 files).

    Raises:
        ValueError: for type 2 (asynchronous) files, which have no single timeline.
    """
    mid = mido.MidiFile(str(midi_path))
    if mid.type == 2:
        raise ValueError(f"{midi_path}: type 2 MIDI files have no single tempo map")
    changes: dict[int, int] = {0: DEFAULT_TEMPO}
    end_tick = 0
    # Tracks are walked one by one (absolute ticks are per track): mido.merge_tracks is ~3x slower
    # than parsing itself. A tempo set twice at one tick keeps the later track's, as merging would.
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo":
                changes[tick] = int(msg.tempo)
        end_tick = max(end_tick, tick)
    ticks = np.asarray(sorted(changes), dtype=np.int64)
    tempos = np.asarray([changes[int(t)] for t in ticks], dtype=np.float64)
    seconds = np.concatenate([[0.0], np.cumsum(np.diff(ticks) * tempos[:-1] / mid.ticks_per_beat / 1e6)])
    return TempoMap(int(mid.ticks_per_beat), ticks, tempos, seconds, end_tick)


def measure_boundaries_tempo_map(tempo_map: TempoMap, measures: int) -> Float64Array:
    """Start times of ``measures`` 4-quarter-note units and the end of the last one, in seconds.

    Returns:
        ``(measures + 1,)`` ascending boundaries.
    """
    ticks = np.arange(measures + 1, dtype=np.int64) * QUARTERS_PER_MEASURE * tempo_map.ticks_per_beat
    return tempo_map.seconds(ticks)


def listener_duration_s(piece: Piece, midi_length_s: float) -> float:
    """Best estimate of the length of the rendition the listeners heard.

    Round 1 stores whole seconds (the length truncated); when the MIDI's length lies within the
    second after the stored value, the MIDI length is the better estimate.
    """
    stored = piece.duration_s
    if stored.is_integer() and stored <= midi_length_s < stored + 1.0:
        return midi_length_s
    return stored


def measure_boundaries(piece: Piece, tempo_map: TempoMap, timing: Timing = "tool") -> Float64Array:
    """Boundaries in seconds of the piece's annotated measures under ``timing`` (see module docs).

    Returns:
        ``(measures + 1,)`` ascending boundaries starting at 0.
    """
    if timing == "tool":
        duration = listener_duration_s(piece, tempo_map.length_s)
        return np.arange(piece.measures + 1, dtype=np.float64) * (duration / piece.measures)
    if timing == "tempo_map":
        return measure_boundaries_tempo_map(tempo_map, piece.measures)
    raise ValueError(f"unknown timing {timing!r}; expected 'tool' or 'tempo_map'")


def frame_labels(boundaries: npt.ArrayLike, per_measure: npt.ArrayLike) -> FloatArray:
    """Per-frame labels from per-measure labels: frame ``k`` takes the measure its end lies in.

    Args:
        boundaries: ``(M + 1,)`` measure boundaries in seconds, ascending, from 0.
        per_measure: ``(M, C)`` or ``(M,)`` labels.

    Returns:
        ``(T, C)`` (or ``(T,)``) labels for the ``T = floor(boundaries[-1] / 0.5)`` frames that end
        within the labelled span.
    """
    b = np.asarray(boundaries, dtype=np.float64)
    values = np.asarray(per_measure, dtype=np.float32)
    count = frames_in_duration(float(b[-1]))
    ends = HOP_S * (np.arange(count) + 1)
    # side="left": an end exactly on a boundary belongs to the measure that boundary closes.
    m = np.clip(np.searchsorted(b, ends - 1e-9, side="left") - 1, 0, values.shape[0] - 1)
    return values[m]
