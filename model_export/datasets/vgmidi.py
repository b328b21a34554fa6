"""VGMIDI, labelled part (Ferreira & Whitehead, ISMIR 2019) → rendered audio and clips.

Expected layout (``/work/shared/data/vgmidi`` on the build machines)::

    <root>/midi/<Series_Console_Game_Piece>.mid
    <root>/annotations/vgmidi_raw_1.json
    <root>/annotations/vgmidi_raw_2.json

Each JSON file is one annotation round with ``pieces`` (``pieceN`` → ``name``, ``midi`` file name,
``measures``, ``duration`` in seconds of the audio rendition the listeners heard) and ``annotations``
(``pieceN_K`` → one listener: ``valence`` and ``arousal`` lists, one value per measure, on [-1, 1]).
Piece ids restart in each file, so a piece is keyed by (file, id). Per measure, the label is the mean
over the piece's listeners. Quirks handled: listener entries whose piece has no metadata are ignored;
entries one value longer than ``measures`` are cut; entries of any other wrong length are ignored.
A piece's group is its MIDI file name, so a MIDI annotated in both rounds never straddles folds.

How a label index maps to time (``timing``):

* ``"tool"`` (default) reproduces the annotation tool. Its source (``lucasnfe/adl-music-annotation``,
  ``timeToMusicMeasure``) stores the listener's cursor at audio time ``t`` into index
  ``floor(t / duration * measures)``: the "measures" are equal slices of the rendition's length,
  whatever the tempo, and each keeps the last cursor position written during its slice. The
  renditions were fluidsynth renders of these MIDI files starting at t = 0 (``midi2annotation.py``);
  in round 2 ``duration`` matches the MIDI length to within milliseconds for most pieces. Round 1
  stores ``duration`` truncated to whole seconds; there the MIDI length is used when it lies within
  ``[duration, duration + 1)``.
* ``"tempo_map"`` treats index ``m`` as the musical unit of quarter notes ``[4 m, 4 m + 4)``,
  converted to seconds through the MIDI's tempo map (``measures`` was computed as
  ``ceil(quarter_length / 4)`` whatever the time signature). This is musically meaningful but is
  not how the tool assigned cursor positions: it disagrees with ``"tool"`` on about 30 % of frames
  (pieces with tempo changes, and pieces whose length is not a whole number of 4-quarter units).

Label per 500 ms frame (causal, consistent with the end-aligned convention of the other recipes):
frame ``k`` (``[0.5 k, 0.5 k + 0.5)``, ``offset_s = 0``) takes the label of the slice or measure in
which its *end* lies, i.e. the ``m`` with ``start_m < 0.5 k + 0.5 <= end_m``, so a frame lying wholly
inside one measure takes that measure's label even when it ends exactly on the next boundary.
Frames that end after the last measure are dropped.

Audio: :func:`render` calls the ``fluidsynth`` CLI with a General MIDI soundfont (Debian packages
``fluidsynth`` and ``fluid-soundfont-gm``; :func:`setup` installs them). Raw renders at fluidsynth's
default gain measure -43 to -22 LUFS (median -32), far below mastered music (about -8 to -16 LUFS),
and a model trained on them would lean on level; :func:`normalise_loudness` therefore brings each
render to ``target_lufs`` (default -14 LUFS integrated, ITU-R BS.1770 via ``pyloudnorm``) with a
look-ahead peak limiter holding samples under ``peak_dbfs``. Renders are stereo 16-bit FLAC in a
cache folder outside git (default ``<repo>/cache/vgmidi/<soundfont>_<rate>hz_<target>lufs/``),
written atomically, rendered in parallel and skipped when already present, so an interrupted run
resumes. Never commit them.

Augmentation (``augment=K``): each piece is also rendered K more times, each time with a seeded random
draw of label-preserving changes (:class:`Variation`): another General MIDI soundfont (TimGM6mb, Debian
``timgm6mb-soundfont``), another keyboard program (bright acoustic or electric piano), a hall reverb
instead of fluidsynth's small default room, and pink noise 25–40 dB below the music. None of them
changes a note, its timing or its velocity, which is what the listeners' arousal and valence follow; a
draw that changes nothing is drawn again. The variant clips carry the original's labels and group and
name it in ``variant_of``; training draws one rendition of each piece per epoch, and validation and
test use only the originals (see ``model_export.train``). A random gain is not among the changes: the
feature path's level policy scales every input to the same level first, so a gain would change nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mido
import numpy as np
import numpy.typing as npt
import pyloudnorm
import soundfile as sf
from scipy.ndimage import minimum_filter1d, uniform_filter1d

from model_export.datasets._common import HOP_S, frames_in_audio, to_unit_range
from model_export.datasets.base import Clip

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
Timing = Literal["tool", "tempo_map"]

ANNOTATION_FILES = ("annotations/vgmidi_raw_1.json", "annotations/vgmidi_raw_2.json")
MIDI_DIR = "midi"
#: Quarter notes per annotated "measure", whatever the time signature.
QUARTERS_PER_MEASURE = 4
#: MIDI's default tempo (120 BPM) in microseconds per quarter note, until the first set_tempo.
DEFAULT_TEMPO = 500_000
APT_PACKAGES = ("fluidsynth", "fluid-soundfont-gm")
#: Second soundfont, for augmentation only (Debian ``timgm6mb-soundfont``, 6 MB).
AUGMENT_APT_PACKAGES = ("timgm6mb-soundfont",)
ALT_SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
#: Keyboard programs an augmented rendition may use instead of the file's own (GM numbering from 0):
#: bright acoustic piano and electric piano 1, whose loudness follows note velocity as a piano's does.
AUGMENT_PROGRAMS = (1, 4)
#: fluidsynth reverb settings of a "hall" variation (its defaults: room-size 0.2, damp 0, width 0.5,
#: level 0.9); the per-channel send (CC 91) stays the file's own.
HALL_REVERB = {
    "synth.reverb.room-size": 0.8,
    "synth.reverb.damp": 0.3,
    "synth.reverb.width": 1.0,
    "synth.reverb.level": 1.0,
}
#: Signal-to-noise ratios a noisy variation draws from (dB, uniform).
NOISE_SNR_DB = (25.0, 40.0)
#: Bump when :func:`draw_variations` or :func:`render_variation` change, so stale renders are not reused.
AUGMENT_VERSION = 1
MIDI_DRUM_CHANNEL = 9
#: Names of the kinds of change a :class:`Variation` can apply (see ``load(augment_exclude=...)``).
AUGMENT_CHANGES = ("soundfont", "program", "reverb", "noise")
SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "cache" / "vgmidi"
#: fluidsynth's own default master gain; the level is set by loudness normalisation afterwards.
RENDER_GAIN = 0.2
#: Audio kept after the last labelled frame: the feature extractor's look-ahead (``LOOKAHEAD_S``).
TAIL_S = 0.1


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
    change_ticks: npt.NDArray[np.int64]
    tempos: npt.NDArray[np.float64]
    change_seconds: npt.NDArray[np.float64]
    end_tick: int

    def seconds(self, ticks: npt.ArrayLike) -> npt.NDArray[np.float64]:
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


def measure_boundaries_tempo_map(tempo_map: TempoMap, measures: int) -> npt.NDArray[np.float64]:
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


def measure_boundaries(piece: Piece, tempo_map: TempoMap, timing: Timing = "tool") -> npt.NDArray[np.float64]:
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
    count = max(0, math.floor(b[-1] / HOP_S + 1e-6))
    ends = HOP_S * (np.arange(count) + 1)
    # side="left": an end exactly on a boundary belongs to the measure that boundary closes.
    m = np.clip(np.searchsorted(b, ends - 1e-9, side="left") - 1, 0, values.shape[0] - 1)
    return values[m]


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def find_soundfont() -> Path | None:
    """The first General MIDI soundfont found in the usual Debian locations, or ``None``."""
    return next((p for p in SOUNDFONT_CANDIDATES if p.is_file()), None)


def setup(*, update: bool = True) -> None:
    """Install ``fluidsynth``, ``fluid-soundfont-gm`` and ``timgm6mb-soundfont`` where missing.

    The second soundfont is only used by augmentation (:class:`Variation`).

    Args:
        update: Run ``apt-get update`` first (needed on a fresh machine).

    Raises:
        RuntimeError: if something is missing and this process cannot install it (not root, or no
            apt-get); the message says what to install.
        subprocess.CalledProcessError: if apt-get fails.
    """
    missing = []
    if shutil.which("fluidsynth") is None:
        missing.append("fluidsynth")
    if find_soundfont() is None:
        missing.append("fluid-soundfont-gm")
    if not ALT_SOUNDFONT.is_file():
        missing.extend(AUGMENT_APT_PACKAGES)
    if not missing:
        return
    hint = "apt-get install -y --no-install-recommends " + " ".join(missing)
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(f"VGMIDI rendering needs {', '.join(missing)}; as root run: {hint}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if update:
        subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class Variation:
    """Label-preserving changes to one rendition (all off: the plain render).

    Attributes:
        soundfont: Soundfont to use instead of the default one.
        program: GM program (0–127) for every melodic channel instead of the file's.
        hall_reverb: fluidsynth's reverb set to :data:`HALL_REVERB`.
        noise_snr_db: Pink noise this many dB below the render's RMS, added before loudness
            normalisation.
        noise_seed: Seed of that noise.
    """

    soundfont: Path | None = None
    program: int | None = None
    hall_reverb: bool = False
    noise_snr_db: float | None = None
    noise_seed: int = 0

    @property
    def changes(self) -> frozenset[str]:
        """Which of :data:`AUGMENT_CHANGES` this variation applies."""
        on = {
            "soundfont": self.soundfont is not None,
            "program": self.program is not None,
            "reverb": self.hall_reverb,
            "noise": self.noise_snr_db is not None,
        }
        return frozenset(name for name, applied in on.items() if applied)

    @property
    def is_identity(self) -> bool:
        """Whether this changes nothing."""
        return (
            self.soundfont is None
            and self.program is None
            and not self.hall_reverb
            and self.noise_snr_db is None
        )

    def describe(self) -> str:
        """Short text such as ``TimGM6mb+program4+hall+snr31dB`` (``plain`` for the identity)."""
        parts = []
        if self.soundfont is not None:
            parts.append(self.soundfont.stem)
        if self.program is not None:
            parts.append(f"program{self.program}")
        if self.hall_reverb:
            parts.append("hall")
        if self.noise_snr_db is not None:
            parts.append(f"snr{self.noise_snr_db:.0f}dB")
        return "+".join(parts) or "plain"


def draw_variations(piece_name: str, count: int, seed: int = 0) -> list[Variation]:
    """``count`` random, non-identity variations of one piece, the same on every run.

    Each change is drawn independently with probability 1/2 (the program from
    :data:`AUGMENT_PROGRAMS`, the SNR uniformly from :data:`NOISE_SNR_DB`); an identity draw is drawn
    again. The random stream depends only on ``seed``, the piece's name and the variation's index.
    """
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, zlib.crc32(piece_name.encode()), k])
        while True:
            snr = float(rng.uniform(*NOISE_SNR_DB))
            v = Variation(
                soundfont=ALT_SOUNDFONT if rng.random() < 0.5 else None,
                program=int(rng.choice(AUGMENT_PROGRAMS)) if rng.random() < 0.5 else None,
                hall_reverb=bool(rng.random() < 0.5),
                noise_snr_db=snr if rng.random() < 0.5 else None,
                noise_seed=int(rng.integers(2**31)),
            )
            if not v.is_identity:
                out.append(v)
                break
    return out


def excluded_changes(names: str | Sequence[str]) -> frozenset[str]:
    """Validated kinds of change to leave out (a single name, as ``--option`` passes it, or a list).

    Raises:
        ValueError: for a name not in :data:`AUGMENT_CHANGES`.
    """
    excluded = frozenset([names] if isinstance(names, str) else names)
    unknown = excluded - set(AUGMENT_CHANGES)
    if unknown:
        raise ValueError(f"unknown augment_exclude {sorted(unknown)}; known: {list(AUGMENT_CHANGES)}")
    return excluded


def augmentation_facts(per_piece: int, seed: int = 0, exclude: str | Sequence[str] = ()) -> dict[str, object]:
    """What a model card should say about ``load(augment=per_piece, ...)``: settings and changes."""
    return {
        "per_piece": per_piece,
        "seed": seed,
        "excluded": sorted(excluded_changes(exclude)),
        "version": AUGMENT_VERSION,
        "changes": (
            f"each drawn with probability 1/2, at least one: soundfont {ALT_SOUNDFONT.stem}; "
            f"GM program {' or '.join(map(str, AUGMENT_PROGRAMS))} on melodic channels; "
            f"fluidsynth hall reverb {HALL_REVERB}; pink noise at "
            f"{NOISE_SNR_DB[0]:g}-{NOISE_SNR_DB[1]:g} dB SNR"
        ),
        "policy": "one rendition of each training piece drawn uniformly per epoch; validation on originals",
    }


def set_program(midi_path: Path, out_path: Path, program: int) -> None:
    """Write a copy of a MIDI file whose melodic channels all play GM ``program``.

    Every program change on a melodic channel is rewritten, and one is inserted at time 0 for each
    channel that plays notes, so channels that relied on the default program change as well. The
    drum channel is left alone.
    """
    if not 0 <= program <= 127:
        raise ValueError(f"GM program must be in 0..127, got {program}")
    mid = mido.MidiFile(str(midi_path))
    used: set[int] = set()
    for track in mid.tracks:
        for i, msg in enumerate(track):
            if msg.type == "program_change" and msg.channel != MIDI_DRUM_CHANNEL:
                track[i] = msg.copy(program=program)
            elif msg.type == "note_on" and msg.channel != MIDI_DRUM_CHANNEL:
                used.add(msg.channel)
    if mid.tracks:
        first = mid.tracks[0]
        for ch in sorted(used, reverse=True):
            first.insert(0, mido.Message("program_change", channel=ch, program=program, time=0))
    mid.save(str(out_path))


def pink_noise(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """``n`` samples of unit-RMS pink (1/f power) noise, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(spectrum.shape[0], dtype=np.float64)
    k[0] = 1.0
    spectrum /= np.sqrt(k)
    spectrum[0] = 0.0
    y = np.fft.irfft(spectrum, n)
    rms = float(np.sqrt(np.mean(np.square(y)))) if n else 0.0
    return y / rms if rms > 0 else y


def add_noise(x: npt.NDArray[np.float64], snr_db: float, seed: int) -> npt.NDArray[np.float64]:
    """``x`` plus pink noise ``snr_db`` below its RMS (independent noise on each channel)."""
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    if rms == 0.0:
        return x
    rng = np.random.default_rng(seed)
    scale = rms * 10.0 ** (-snr_db / 20.0)
    if x.ndim == 1:
        noise = pink_noise(x.shape[0], rng)
    else:
        noise = np.stack([pink_noise(x.shape[0], rng) for _ in range(x.shape[1])], axis=1)
    return np.asarray(x + scale * noise)


def render(
    midi_path: Path,
    out_wav: Path,
    sample_rate: int = 44_100,
    soundfont: Path | None = None,
    *,
    gain: float = RENDER_GAIN,
    settings: dict[str, float] | None = None,
    timeout_s: float = 900.0,
) -> None:
    """Render a MIDI file to a 32-bit float stereo WAV with the ``fluidsynth`` CLI, as is.

    Reverb and chorus stay at fluidsynth's defaults, as in the renditions the listeners heard. Float
    samples keep loud passages from clipping before :func:`normalise_loudness` sets the level.

    Args:
        midi_path: MIDI file.
        out_wav: WAV file to write.
        sample_rate: Output rate in Hz.
        soundfont: ``.sf2`` file; the first of :data:`SOUNDFONT_CANDIDATES` found if not given.
        gain: fluidsynth master gain (0–10).
        settings: Extra fluidsynth settings (``-o name=value``), e.g. :data:`HALL_REVERB`.
        timeout_s: Give up on a render that takes longer.

    Raises:
        RuntimeError: if fluidsynth or a soundfont is missing, fluidsynth fails, or it writes no
            audio.
    """
    exe = shutil.which("fluidsynth")
    sf2 = soundfont or find_soundfont()
    if exe is None or sf2 is None:
        raise RuntimeError("fluidsynth and a GM soundfont are needed; call vgmidi.setup() (root) first")
    cmd = [
        exe,
        "-ni",  # no MIDI input driver, no interactive shell
        "-q",
        "-g",
        f"{gain:g}",
        *(arg for name, value in (settings or {}).items() for arg in ("-o", f"{name}={value:g}")),
        "-r",
        str(sample_rate),
        "-T",
        "wav",
        "-O",
        "float",
        "-F",
        str(out_wav),
        str(sf2),
        str(midi_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0 or not out_wav.is_file() or sf.info(str(out_wav)).frames == 0:
        detail = (proc.stderr or proc.stdout)[-500:]
        raise RuntimeError(f"fluidsynth failed on {midi_path} (exit {proc.returncode}): {detail}")


def peak_limit(
    x: npt.NDArray[np.float64],
    sample_rate: int,
    ceiling: float,
    *,
    attack_s: float = 0.005,
    release_s: float = 0.08,
) -> npt.NDArray[np.float64]:
    """Look-ahead peak limiter: a smooth gain that keeps every sample's magnitude within ``ceiling``.

    The gain needed at each sample is spread over a window reaching ``attack_s`` ahead and
    ``release_s`` behind by a running minimum, then smoothed by a centred moving average of
    ``2 attack_s``; because the minimum window covers the whole averaging window around every peak,
    the smoothed gain never exceeds what a peak needs. Channels share one gain (no image shift).

    Args:
        x: ``(N,)`` or ``(N, C)`` samples.
        sample_rate: Rate in Hz.
        ceiling: Largest allowed magnitude.
        attack_s: Look-ahead (attack) time.
        release_s: Hold time after a peak before the gain recovers (at least ``attack_s``).

    Returns:
        The limited signal, same shape.
    """
    level = np.abs(x) if x.ndim == 1 else np.abs(x).max(axis=1)
    need = np.minimum(1.0, ceiling / np.maximum(level, 1e-12))
    if need.min() >= 1.0:
        return x
    a = max(1, round(attack_s * sample_rate))
    r = max(a, round(release_s * sample_rate))
    # Each peak must hold the gain down from a samples before it to r samples after it; with
    # size a + r + 1, this origin makes a sample at n affect outputs [n - a, n + r].
    held = minimum_filter1d(need, size=a + r + 1, origin=(a + r) // 2 - a, mode="nearest")
    gain = uniform_filter1d(held, size=2 * a + 1, mode="nearest")
    gain = np.minimum(gain, need)  # guard against rounding in the moving average
    return np.asarray(x * (gain if x.ndim == 1 else gain[:, None]))


@dataclass(frozen=True)
class LoudnessReport:
    """Levels before and after :func:`normalise_loudness`.

    Attributes:
        lufs_in: Integrated loudness of the input (LUFS).
        lufs_out: Integrated loudness of the output (LUFS).
        rms_dbfs_in: RMS level of the input (dBFS, all channels).
        rms_dbfs_out: RMS level of the output.
        peak_out: Largest output magnitude.
        gain_db: Gain applied before limiting.
    """

    lufs_in: float
    lufs_out: float
    rms_dbfs_in: float
    rms_dbfs_out: float
    peak_out: float
    gain_db: float


def normalise_loudness(
    x: npt.ArrayLike, sample_rate: int, target_lufs: float = -14.0, peak_dbfs: float = -1.0
) -> tuple[npt.NDArray[np.float64], LoudnessReport]:
    """Bring audio to ``target_lufs`` integrated loudness, limiting peaks to ``peak_dbfs``.

    Loudness is linear in gain, so one measurement sets the gain; the limiter then lowers loudness
    slightly and the gain is corrected (at most three passes, to within 0.1 LU).

    Args:
        x: ``(N,)`` or ``(N, C)`` samples.
        sample_rate: Rate in Hz.
        target_lufs: Integrated loudness to reach (ITU-R BS.1770, ``pyloudnorm``).
        peak_dbfs: Sample-peak ceiling in dBFS (< 0).

    Returns:
        The normalised samples (float64, within ``[-10 ** (peak_dbfs / 20), 10 ** (peak_dbfs / 20)]``)
        and a report. Silent or too-short input (loudness not measurable) is returned unchanged.
    """
    y = np.asarray(x, dtype=np.float64)
    ceiling = 10.0 ** (peak_dbfs / 20.0)
    meter = pyloudnorm.Meter(sample_rate)
    rms_in = _rms_dbfs(y)
    lufs_in = _loudness(meter, y)
    if not math.isfinite(lufs_in):
        return y, LoudnessReport(lufs_in, lufs_in, rms_in, rms_in, float(np.abs(y).max(initial=0.0)), 0.0)
    gain_db = target_lufs - lufs_in
    out = y
    lufs_out = lufs_in
    for _ in range(3):
        out = peak_limit(y * 10.0 ** (gain_db / 20.0), sample_rate, ceiling)
        lufs_out = _loudness(meter, out)
        if not math.isfinite(lufs_out) or abs(lufs_out - target_lufs) < 0.1:
            break
        gain_db += target_lufs - lufs_out
    out = np.clip(out, -ceiling, ceiling)
    report = LoudnessReport(
        lufs_in=lufs_in,
        lufs_out=lufs_out,
        rms_dbfs_in=rms_in,
        rms_dbfs_out=_rms_dbfs(out),
        peak_out=float(np.abs(out).max(initial=0.0)),
        gain_db=gain_db,
    )
    return out, report


def _loudness(meter: pyloudnorm.Meter, y: npt.NDArray[np.float64]) -> float:
    if y.shape[0] < round(0.4 * meter.rate):
        return -math.inf  # shorter than one gating block: not measurable
    # pyloudnorm filters one channel at a time; channel-contiguous data makes that ~30 % faster.
    return float(meter.integrated_loudness(np.asfortranarray(y)))


def _rms_dbfs(y: npt.NDArray[np.float64]) -> float:
    ms = float(np.mean(np.square(y))) if y.size else 0.0
    return 10.0 * math.log10(ms) if ms > 0 else -math.inf


@dataclass(frozen=True)
class RenderJob:
    """One render of :func:`render_many`.

    Attributes:
        midi_path: MIDI file.
        out_path: FLAC file to write.
        min_duration_s: Zero-pad the render to at least this length.
        variation: Label-preserving changes (augmentation); the plain render by default.
    """

    midi_path: Path
    out_path: Path
    min_duration_s: float = 0.0
    variation: Variation = Variation()


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render_to_cache` did.

    Attributes:
        out_path: The FLAC written.
        duration_s: Its length in seconds.
        wall_s: Seconds spent rendering and normalising.
        loudness: Levels before and after normalisation.
    """

    out_path: Path
    duration_s: float
    wall_s: float
    loudness: LoudnessReport


def render_to_cache(
    job: RenderJob,
    *,
    sample_rate: int = 44_100,
    soundfont: Path | None = None,
    target_lufs: float = -14.0,
    peak_dbfs: float = -1.0,
) -> RenderResult:
    """Render one MIDI file, normalise its loudness and store it as 16-bit stereo FLAC, atomically.

    Args:
        job: What to render and where.
        sample_rate: Output rate in Hz.
        soundfont: ``.sf2`` file (default: :func:`find_soundfont`).
        target_lufs: Integrated loudness of the stored audio.
        peak_dbfs: Sample-peak ceiling of the stored audio.

    Returns:
        Where the file went, its length, the time taken and the levels.
    """
    start = time.perf_counter()
    job.out_path.parent.mkdir(parents=True, exist_ok=True)
    var = job.variation
    with tempfile.TemporaryDirectory(dir=job.out_path.parent, prefix=".render-") as tmp:
        raw_path = Path(tmp) / "raw.wav"
        midi_path = job.midi_path
        if var.program is not None:
            midi_path = Path(tmp) / "program.mid"
            set_program(job.midi_path, midi_path, var.program)
        render(
            midi_path,
            raw_path,
            sample_rate,
            var.soundfont or soundfont,
            settings=HALL_REVERB if var.hall_reverb else None,
        )
        raw, rate = sf.read(str(raw_path), dtype="float64", always_2d=True)
        short = round(job.min_duration_s * rate) - raw.shape[0]
        if short > 0:
            # The tool's timeline can outlast the notes by a little; silence is what was heard there.
            raw = np.concatenate([raw, np.zeros((short, raw.shape[1]))])
        if var.noise_snr_db is not None:
            raw = add_noise(raw, var.noise_snr_db, var.noise_seed)
        out, report = normalise_loudness(raw, rate, target_lufs, peak_dbfs)
        part = Path(tmp) / "out.flac"
        sf.write(str(part), out, rate, format="FLAC", subtype="PCM_16")
        os.replace(part, job.out_path)
    return RenderResult(job.out_path, out.shape[0] / rate, time.perf_counter() - start, report)


def render_many(
    jobs: Sequence[RenderJob],
    *,
    sample_rate: int = 44_100,
    soundfont: Path | None = None,
    target_lufs: float = -14.0,
    peak_dbfs: float = -1.0,
    workers: int | None = None,
) -> list[RenderResult]:
    """Render the jobs whose output does not exist yet, in parallel processes.

    Args:
        jobs: Renders to do; those with an existing ``out_path`` are skipped (resumable).
        sample_rate: Output rate in Hz.
        soundfont: ``.sf2`` file (default: :func:`find_soundfont`).
        target_lufs: Integrated loudness of the stored audio.
        peak_dbfs: Sample-peak ceiling of the stored audio.
        workers: Processes (default: all cores).

    Returns:
        Results of the renders done now (not of the skipped ones), in completion order.

    Raises:
        RuntimeError: if fluidsynth or a soundfont is missing, or a render fails.
    """
    todo = [j for j in jobs if not j.out_path.is_file()]
    if not todo:
        return []
    alt = sorted({str(j.variation.soundfont) for j in todo if j.variation.soundfont is not None})
    if any(not Path(f).is_file() for f in alt):
        raise RuntimeError(
            f"augmented renders need the soundfonts {alt}; call model_export.datasets.vgmidi.setup() "
            "as root, or apt-get install " + " ".join(AUGMENT_APT_PACKAGES)
        )
    if shutil.which("fluidsynth") is None or (soundfont or find_soundfont()) is None:
        raise RuntimeError(
            "fluidsynth and a GM soundfont are needed to render VGMIDI; call "
            "model_export.datasets.vgmidi.setup() as root, or apt-get install " + " ".join(APT_PACKAGES)
        )
    work = functools.partial(
        render_to_cache,
        sample_rate=sample_rate,
        soundfont=soundfont,
        target_lufs=target_lufs,
        peak_dbfs=peak_dbfs,
    )
    results: list[RenderResult] = []
    n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    log.info("VGMIDI: rendering %d of %d pieces on %d processes", len(todo), len(jobs), n)
    if n == 1:
        return [work(job) for job in todo]
    with ProcessPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(work, job) for job in todo]
        for done, future in enumerate(as_completed(futures), start=1):
            results.append(future.result())
            if done % 20 == 0 or done == len(todo):
                log.info("VGMIDI: rendered %d/%d", done, len(todo))
    return results


def cache_folder(
    cache_dir: Path, sample_rate: int, target_lufs: float, soundfont: Path | None = None
) -> Path:
    """Sub-folder of ``cache_dir`` for renders made with these settings (so none is reused stale)."""
    sf2 = soundfont or find_soundfont()
    font = re.sub(r"[^\w.-]+", "_", sf2.stem) if sf2 is not None else "nosoundfont"
    return Path(cache_dir) / f"{font}_{sample_rate}hz_{target_lufs:g}lufs"


def _audio_names(midis: Iterable[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    used: set[str] = set()
    for midi in sorted(set(midis)):
        base = re.sub(r"[^\w.-]+", "_", Path(midi).stem).strip("_") or "piece"
        name, i = base, 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        names[midi] = name + ".flac"
    return names


def load(
    root: Path,
    cache_dir: Path | None = None,
    *,
    render_audio: bool = True,
    timing: Timing = "tool",
    sample_rate: int = 44_100,
    target_lufs: float = -14.0,
    peak_dbfs: float = -1.0,
    soundfont: Path | None = None,
    workers: int | None = None,
    augment: int = 0,
    augment_seed: int = 0,
    augment_exclude: Sequence[str] = (),
) -> list[Clip]:
    """Load VGMIDI's labelled pieces as clips of rendered, loudness-normalised audio.

    Args:
        root: VGMIDI folder (holding ``midi/`` and ``annotations/``).
        cache_dir: Where renders live (default ``<repo>/cache/vgmidi``; keep it out of git).
        render_audio: Render missing audio now (needs fluidsynth). If false, clips point at where
            the renders would be and their length is not checked against the audio.
        timing: How label indices map to time: ``"tool"`` or ``"tempo_map"`` (see module docs).
        sample_rate: Render rate in Hz.
        target_lufs: Integrated loudness of the renders.
        peak_dbfs: Sample-peak ceiling of the renders.
        soundfont: ``.sf2`` file (default: :func:`find_soundfont`).
        workers: Render processes (default: all cores).
        augment: Augmented renditions per piece (see the module docs); 0 for none.
        augment_seed: Seed of the augmentations drawn.
        augment_exclude: Kinds of change (names from :data:`AUGMENT_CHANGES`) to leave out, for
            ablations: renditions whose draw applies one of them are dropped, the others are the
            same files as without the exclusion, so a piece keeps 0 to ``augment`` variants.

    Returns:
        One clip per annotated piece and round (``offset_s = 0``); ``clip_id`` is the MIDI file's
        stem (suffixed with the round if a MIDI was annotated twice), ``group`` the MIDI file name.
        With ``augment=K``, each is followed by K variant clips ``<clip_id> ~augK`` whose
        ``variant_of`` is the original's id.

    Raises:
        FileNotFoundError: if an annotation file is missing.
        RuntimeError: if rendering is needed but fluidsynth is missing, or a render fails.
    """
    root = Path(root)
    pieces = read_pieces(root)
    folder = cache_folder(cache_dir or DEFAULT_CACHE_DIR, sample_rate, target_lufs, soundfont)
    names = _audio_names(p.midi for p in pieces)
    midi_count: dict[str, int] = {}
    for p in pieces:
        midi_count[p.midi] = midi_count.get(p.midi, 0) + 1
    plans: list[tuple[Piece, npt.NDArray[np.float64], RenderJob]] = []
    jobs: dict[str, RenderJob] = {}
    missing_midi = []
    for piece in pieces:
        midi_path = root / MIDI_DIR / piece.midi
        if not midi_path.is_file():
            missing_midi.append(piece.midi)
            continue
        tempo = read_tempo_map(midi_path)
        bounds = measure_boundaries(piece, tempo, timing)
        # Cover every labelled frame under either timing, so one render serves both.
        span = max(
            measure_boundaries(piece, tempo, "tool")[-1], measure_boundaries(piece, tempo, "tempo_map")[-1]
        )
        job = jobs.get(piece.midi)
        need = float(span) + TAIL_S
        if job is None or job.min_duration_s < need:
            job = RenderJob(midi_path, folder / names[piece.midi], need)
            jobs[piece.midi] = job
        plans.append((piece, bounds, job))
    if missing_midi:
        log.warning("VGMIDI: %d pieces skipped, MIDI file missing: %s", len(missing_midi), missing_midi[:10])
    if augment < 0:
        raise ValueError(f"augment must be >= 0, got {augment}")
    excluded = excluded_changes(augment_exclude)
    aug_folder = folder.with_name(f"{folder.name}_aug{AUGMENT_VERSION}_seed{augment_seed}")
    aug_jobs: dict[str, list[RenderJob]] = {}
    for midi, job in jobs.items():
        stem = names[midi].removesuffix(".flac")
        aug_jobs[midi] = [
            RenderJob(job.midi_path, aug_folder / f"{stem}~{k + 1}.flac", job.min_duration_s, v)
            for k, v in enumerate(draw_variations(midi, augment, augment_seed))
            if not v.changes & excluded
        ]
    if render_audio:
        results = render_many(
            list(jobs.values()) + [j for js in aug_jobs.values() for j in js],
            sample_rate=sample_rate,
            soundfont=soundfont,
            target_lufs=target_lufs,
            peak_dbfs=peak_dbfs,
            workers=workers,
        )
        if results:
            _log_render_summary(results)
    clips: list[Clip] = []
    for piece, bounds, job in plans:
        targets = frame_labels(bounds, np.stack([piece.arousal, piece.valence], axis=1))
        if render_audio:
            available = frames_in_audio(job.out_path, 0.0) or 0
            targets = targets[:available]
        if targets.shape[0] == 0:
            log.warning("VGMIDI: %s has no complete labelled frame; skipped", piece.key)
            continue
        stem = Path(piece.midi).stem
        clip_id = stem if midi_count[piece.midi] == 1 else f"{stem} [{piece.key.split('/')[0]}]"
        clips.append(Clip(clip_id=clip_id, audio_path=job.out_path, targets=targets, group=piece.midi))
        for aug in aug_jobs[piece.midi]:
            aug_targets = targets[: frames_in_audio(aug.out_path, 0.0) or 0] if render_audio else targets
            if aug_targets.shape[0] == 0:
                continue
            k = aug.out_path.stem.rpartition("~")[2]  # the draw's index, also when some are excluded
            clips.append(
                Clip(
                    clip_id=f"{clip_id} ~aug{k}",
                    audio_path=aug.out_path,
                    targets=aug_targets,
                    group=piece.midi,
                    variant_of=clip_id,
                )
            )
    return clips


def _log_render_summary(results: Sequence[RenderResult]) -> None:
    lufs_in = np.asarray([r.loudness.lufs_in for r in results])
    lufs_out = np.asarray([r.loudness.lufs_out for r in results])
    log.info(
        "VGMIDI: rendered %d pieces (%.0f s of audio, %.0f s of CPU); loudness %.1f → %.1f LUFS (median)",
        len(results),
        sum(r.duration_s for r in results),
        sum(r.wall_s for r in results),
        float(np.median(lufs_in)),
        float(np.median(lufs_out)),
    )
