"""VGMIDI, labelled part (Ferreira & Whitehead, ISMIR 2019) → rendered audio and clips.

A package of small modules: :mod:`.annotations` (the JSON rounds → per-measure labels),
:mod:`.timing` (tempo maps, the annotation tool's timeline, frame labels), :mod:`.rendering`
(fluidsynth and the render cache), :mod:`.loudness` (normalisation and the limiter), :mod:`.augment`
(label-preserving variations) and :mod:`.recipe` (``load``). The names below are re-exported here.

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

from model_export.datasets.vgmidi.annotations import ANNOTATION_FILES, Piece, read_pieces
from model_export.datasets.vgmidi.augment import (
    ALT_SOUNDFONT,
    AUGMENT_APT_PACKAGES,
    AUGMENT_CHANGES,
    AUGMENT_PROGRAMS,
    AUGMENT_VERSION,
    HALL_REVERB,
    MIDI_DRUM_CHANNEL,
    NOISE_SNR_DB,
    Variation,
    add_noise,
    augmentation_facts,
    draw_variations,
    excluded_changes,
    pink_noise,
    set_program,
)
from model_export.datasets.vgmidi.loudness import LoudnessReport, normalise_loudness, peak_limit
from model_export.datasets.vgmidi.recipe import DEFAULT_CACHE_DIR, MIDI_DIR, TAIL_S, load
from model_export.datasets.vgmidi.rendering import (
    APT_PACKAGES,
    RENDER_GAIN,
    SOUNDFONT_CANDIDATES,
    RenderJob,
    RenderResult,
    cache_folder,
    find_soundfont,
    render,
    render_many,
    render_to_cache,
    setup,
)
from model_export.datasets.vgmidi.timing import (
    DEFAULT_TEMPO,
    QUARTERS_PER_MEASURE,
    TempoMap,
    Timing,
    frame_labels,
    listener_duration_s,
    measure_boundaries,
    measure_boundaries_tempo_map,
    read_tempo_map,
)

__all__ = [
    "ALT_SOUNDFONT",
    "ANNOTATION_FILES",
    "APT_PACKAGES",
    "AUGMENT_APT_PACKAGES",
    "AUGMENT_CHANGES",
    "AUGMENT_PROGRAMS",
    "AUGMENT_VERSION",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_TEMPO",
    "HALL_REVERB",
    "MIDI_DIR",
    "MIDI_DRUM_CHANNEL",
    "NOISE_SNR_DB",
    "QUARTERS_PER_MEASURE",
    "RENDER_GAIN",
    "SOUNDFONT_CANDIDATES",
    "TAIL_S",
    "LoudnessReport",
    "Piece",
    "RenderJob",
    "RenderResult",
    "TempoMap",
    "Timing",
    "Variation",
    "add_noise",
    "augmentation_facts",
    "cache_folder",
    "draw_variations",
    "excluded_changes",
    "find_soundfont",
    "frame_labels",
    "listener_duration_s",
    "load",
    "measure_boundaries",
    "measure_boundaries_tempo_map",
    "normalise_loudness",
    "peak_limit",
    "pink_noise",
    "read_pieces",
    "read_tempo_map",
    "render",
    "render_many",
    "render_to_cache",
    "set_program",
    "setup",
]
