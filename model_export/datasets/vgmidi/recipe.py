"""The VGMIDI recipe: annotated pieces → rendered audio and clips with per-frame labels (``load``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model_export.datasets._common import frames_in_audio
from model_export.datasets.base import Clip
from model_export.datasets.vgmidi.annotations import Piece, read_pieces
from model_export.datasets.vgmidi.augment import AUGMENT_VERSION, draw_variations, excluded_changes
from model_export.datasets.vgmidi.rendering import RenderJob, RenderResult, cache_folder, render_many
from model_export.datasets.vgmidi.timing import Timing, frame_labels, measure_boundaries, read_tempo_map

log = logging.getLogger(__name__)

MIDI_DIR = "midi"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[3] / "cache" / "vgmidi"
#: Audio kept after the last labelled frame: the feature extractor's look-ahead (``LOOKAHEAD_S``).
TAIL_S = 0.1


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
