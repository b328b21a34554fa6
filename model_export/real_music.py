"""Run a shipped model over real recordings from Debian packages: the real-music sanity report.

The recordings are fetched at run time (``apt-get download`` + ``dpkg-deb -x`` into a cache folder;
never committed): Muldjord's metal songs for Frets on Fire (``fretsonfire-songs-muldjord``, CC BY-SA;
each song is a backing track plus a guitar stem, mixed here) and the soundtrack of the adventure game
Drascula (``drascula-music``; orchestral/ambient game cues). Every track goes through the service's own
path (``app.core.audio.decode`` → ``app.core.features`` → ``app.core.predictor``), and the report gives
per-track mean and standard deviation of arousal and valence, trajectories and the tracks on the
valence-arousal circumplex, so a reader can judge whether the ordering is plausible.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from app.core.audio import decode
from app.core.features import FeatureExtractor
from app.core.predictor import Predictor
from app.core.types import FloatArray

log = logging.getLogger(__name__)

PACKAGES = ("fretsonfire-songs-muldjord", "drascula-music")
#: Shorter Drascula cues (jingles of 7-13 s) say little about a trajectory.
MIN_DURATION_S = 20.0


@dataclass(frozen=True)
class Track:
    """One recording: its name, collection and the file(s) that are mixed into it."""

    name: str
    collection: str
    files: tuple[Path, ...]


def fetch(cache: Path, packages: Sequence[str] = PACKAGES) -> Path:
    """Download and unpack the Debian packages into ``cache`` (reused when already there).

    Returns:
        The folder the packages were unpacked into.
    """
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    for package in packages:
        if not any(debs.glob(f"{package}_*.deb")):
            if shutil.which("apt-get") is None:
                raise RuntimeError("apt-get is needed to download the recordings")
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        (deb,) = sorted(debs.glob(f"{package}_*.deb"))
        stamp = root / f".{deb.name}.unpacked"
        if not stamp.exists():
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            stamp.touch()
    return root


def find_tracks(root: Path) -> list[Track]:
    """The report's tracks inside an unpacked package tree."""
    tracks = []
    for song in sorted((root / "usr/share/games/fretsonfire/data/songs").glob("*/*/song.ogg")):
        stems = [song, *sorted(song.parent.glob("guitar.ogg"))]
        tracks.append(Track(f"fof/{song.parent.name}", "Frets on Fire (Muldjord, metal)", tuple(stems)))
    for cue in sorted((root / "usr/share/scummvm/drascula/en").glob("track*.ogg"), key=_track_number):
        if sf.info(str(cue)).duration >= MIN_DURATION_S:
            tracks.append(Track(f"drascula/{cue.stem}", "Drascula (game soundtrack)", (cue,)))
    return tracks


def _track_number(path: Path) -> int:
    digits = "".join(c for c in path.stem if c.isdigit())
    return int(digits) if digits else 0


def load_track(track: Track, rate: int) -> FloatArray:
    """The track as the service would decode it, its stems (if several) mixed: mono float32 at ``rate``."""
    stems = [decode(f, rate) for f in track.files]
    n = min(s.size for s in stems)
    mixed: FloatArray = np.sum([s[:n] for s in stems], axis=0, dtype=np.float32)
    return mixed


def analyse(
    tracks: Sequence[Track], predictor: Predictor, extractor: FeatureExtractor
) -> list[dict[str, Any]]:
    """Predict every track with the service's own decode → features → model path."""
    rate = extractor.config.sample_rate
    rows = []
    for track in tracks:
        signal = load_track(track, rate)
        n = signal.size
        feats = extractor.extract(signal)
        y = predictor.predict(feats.values)
        a, v = y[:, 0], y[:, 1]
        rows.append(
            {
                "track": track.name,
                "collection": track.collection,
                "duration_s": round(n / rate, 1),
                "gain_db": round(feats.gain_db, 1),
                "arousal_mean": float(a.mean()),
                "arousal_std": float(a.std()),
                "valence_mean": float(v.mean()),
                "valence_std": float(v.std()),
                "arousal": a.round(4).tolist(),
                "valence": v.round(4).tolist(),
            }
        )
        log.info("%s: A %.3f±%.3f V %.3f±%.3f", track.name, a.mean(), a.std(), v.mean(), v.std())
    return rows


def plot(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Trajectories and circumplex figures (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    collections = sorted({r["collection"] for r in rows})
    colour = {c: f"C{i}" for i, c in enumerate(collections)}
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in rows:
        t = np.arange(len(r["arousal"])) * 0.5
        for ax, key in zip(axes, ("arousal", "valence"), strict=True):
            ax.plot(t, r[key], color=colour[r["collection"]], alpha=0.6, lw=0.8)
    for ax, key in zip(axes, ("arousal", "valence"), strict=True):
        ax.set_ylabel(key)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("time (s)")
    handles = [Line2D([], [], color=colour[c], label=c) for c in collections]
    axes[0].legend(handles=handles, fontsize=8, loc="upper right")
    fig.tight_layout()
    trajectories = out / "trajectories.png"
    fig.savefig(trajectories, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    for r in rows:
        ax.errorbar(
            r["valence_mean"],
            r["arousal_mean"],
            xerr=r["valence_std"],
            yerr=r["arousal_std"],
            fmt="o",
            color=colour[r["collection"]],
            alpha=0.7,
            ms=4,
            lw=0.6,
        )
        ax.annotate(r["track"].split("/")[-1], (r["valence_mean"], r["arousal_mean"]), fontsize=6)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_xlabel("valence (mean ± std over frames)")
    ax.set_ylabel("arousal")
    ax.legend(handles=handles, fontsize=8, loc="lower left")
    ax.set_title("tracks on the circumplex")
    fig.tight_layout()
    circumplex = out / "circumplex.png"
    fig.savefig(circumplex, dpi=110)
    plt.close(fig)
    return [trajectories, circumplex]


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-collection means and the rank-separation of arousal between collections."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["collection"], []).append(r)
    summary: dict[str, Any] = {"collections": {}}
    for name, members in sorted(by.items()):
        a = np.array([m["arousal_mean"] for m in members])
        v = np.array([m["valence_mean"] for m in members])
        summary["collections"][name] = {
            "tracks": len(members),
            "arousal_mean": float(a.mean()),
            "valence_mean": float(v.mean()),
            "arousal_range": [float(a.min()), float(a.max())],
            "valence_range": [float(v.min()), float(v.max())],
        }
    if len(by) == 2:
        (_, first), (_, second) = sorted(by.items())
        a1 = np.array([m["arousal_mean"] for m in first])
        a2 = np.array([m["arousal_mean"] for m in second])
        # Probability that a random track of the first collection has higher mean arousal (AUC).
        summary["arousal_auc_first_over_second"] = float(np.mean(a1[:, None] > a2[None, :]))
    return summary


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of per-track statistics."""
    lines = [
        "| track | collection | duration | gain dB | arousal mean ± std | valence mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["arousal_mean"]):
        lines.append(
            f"| {r['track']} | {r['collection']} | {r['duration_s']:.0f} s | {r['gain_db']:+.1f} | "
            f"{r['arousal_mean']:+.3f} ± {r['arousal_std']:.3f} | "
            f"{r['valence_mean']:+.3f} ± {r['valence_std']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(model: Path, out: Path, cache: Path) -> dict[str, Any]:
    """Fetch the recordings, analyse them with ``model`` and write ``out``/{tracks.json,tracks.md,*.png}.

    Returns:
        The summary (also in ``tracks.json``).
    """
    root = fetch(cache)
    tracks = find_tracks(root)
    if not tracks:
        raise RuntimeError(f"no recordings found under {root}")
    predictor = Predictor.load(model, providers="cpu", intra_op_threads=os.cpu_count() or 1)
    extractor = FeatureExtractor(predictor.contract.features)
    extractor.check_contract(predictor.contract)
    rows = analyse(tracks, predictor, extractor)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    summary["model"] = {k: v for k, v in predictor.info().items() if isinstance(v, str | int | float)}
    (out / "tracks.json").write_text(json.dumps({"summary": summary, "tracks": rows}) + "\n")
    (out / "tracks.md").write_text(table(rows))
    plot(rows, out)
    return summary
