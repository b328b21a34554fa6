"""Augmented renditions: seeded, label-preserving changes to how a piece is rendered.

Another General MIDI soundfont (TimGM6mb), another keyboard program (bright acoustic or electric
piano), a hall reverb, pink noise 25–40 dB below the music: none changes a note, its timing or its
velocity, which is what the listeners' arousal and valence follow.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import numpy.typing as npt

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
#: Bump when :func:`draw_variations` or :func:`render_to_cache` change, so stale renders are not reused.
AUGMENT_VERSION = 1
MIDI_DRUM_CHANNEL = 9
#: Names of the kinds of change a :class:`Variation` can apply (see ``load(augment_exclude=...)``).
AUGMENT_CHANGES = ("soundfont", "program", "reverb", "noise")


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
