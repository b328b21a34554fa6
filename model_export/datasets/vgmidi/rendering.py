"""Rendering MIDI with the ``fluidsynth`` CLI into a cache of loudness-normalised FLAC files.

:func:`render` calls fluidsynth with a General MIDI soundfont (Debian ``fluidsynth`` and
``fluid-soundfont-gm``; :func:`setup` installs them); :func:`render_to_cache` applies a
:class:`~model_export.datasets.vgmidi.augment.Variation`, normalises loudness and writes 16-bit stereo
FLAC atomically; :func:`render_many` renders what is missing in parallel processes, so an interrupted
run resumes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from model_export.datasets.vgmidi.augment import (
    ALT_SOUNDFONT,
    AUGMENT_APT_PACKAGES,
    HALL_REVERB,
    Variation,
    add_noise,
    set_program,
)
from model_export.datasets.vgmidi.loudness import LoudnessReport, normalise_loudness

log = logging.getLogger(__name__)

APT_PACKAGES = ("fluidsynth", "fluid-soundfont-gm")
SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)
#: fluidsynth's own default master gain; the level is set by loudness normalisation afterwards.
RENDER_GAIN = 0.2


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
    variation: Variation = field(default_factory=Variation)


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
