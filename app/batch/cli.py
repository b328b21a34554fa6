"""``mer-score``: score a catalogue into Parquet (or JSONL), on this machine or on a Ray cluster.

Examples::

    mer-score ~/music --out scores/                       # a folder, recursively, every core
    mer-score catalogue.csv --out scores/ --limit 1000    # a manifest: id,path[,offset_s,duration_s]
    mer-score list.txt a.mp3 --out scores/ --format jsonl
    mer-score catalogue.jsonl --out scores/ --engine ray --address auto

Rerunning with the same ``--out`` skips the tracks already written. The model and the per-track
limits come from the service's settings (``MER_MODEL_PATH``, ``MER_MAX_DURATION_S``, ...; see the
README), overridable here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.batch.local import JobStats, run_local
from app.batch.output import OutputFolder
from app.batch.scoring import Limits, Scorer
from app.batch.tracks import count_tracks, iter_tracks
from app.core.errors import ServiceError
from app.core.predictor import Predictor
from app.settings import Settings

__all__ = ["main"]


def parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    """The command line, with defaults from ``settings``."""
    p = argparse.ArgumentParser(
        prog="mer-score",
        description="Per-frame arousal/valence for a catalogue: folders, path lists (.txt) and "
        "manifests (.csv/.jsonl with id, path, offset_s, duration_s) in; Parquet or JSONL parts out.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="folders, audio files, .txt path lists, manifests")
    p.add_argument("--out", type=Path, required=True, help="output folder (rerun it to resume)")
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="part file format")
    p.add_argument("--model", type=Path, default=settings.model_path, help="ONNX model (MER_MODEL_PATH)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="score at most N tracks in this run")
    p.add_argument("--part-rows", type=int, default=1000, help="rows per part file")
    p.add_argument(
        "--max-duration-s", type=float, default=settings.max_duration_s, help="longest range analysed"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="this machine, or Ray Data")
    ray = p.add_argument_group("Ray engine")
    ray.add_argument(
        "--address", default=None, help="Ray cluster address (auto, host:6379, ray://host:10001)"
    )
    ray.add_argument("--extract-actors", type=int, default=None, help="decode+extract actors (default: CPUs)")
    ray.add_argument("--predict-actors", type=int, default=1, help="predictor actors")
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per predictor actor")
    ray.add_argument("--chunk", type=int, default=4096, help="tracks per Ray dataset")
    args = p.parse_args(argv)
    for name in ("workers", "part_rows", "predict_actors", "chunk"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 0:
        p.error("--limit must be >= 0")
    if not args.max_duration_s > 0:
        p.error("--max-duration-s must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run a job; exit status 0 when it ran (per-track failures included), 2 on a usage or model error."""
    settings = Settings()
    args = parse_args(argv, settings)
    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        print(f"mer-score: no such input: {', '.join(missing)}", file=sys.stderr)
        return 2
    limits = Limits(args.max_duration_s, settings.max_decoded_samples)
    try:
        out = OutputFolder(args.out, args.format, args.part_rows)
    except OSError as exc:  # not a folder, not writable
        print(f"mer-score: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 2
    # The counting pass reads the whole input once more: only for a bar that shows an ETA.
    total = None if args.no_progress else count_tracks(args.inputs)
    if total is not None and args.limit is not None:
        total = min(total, args.limit)
    progress, close_bar = _progress_bar(total, disabled=args.no_progress)
    try:
        stats = _run(args, settings, limits, out, progress)
    except ServiceError as exc:  # the model: missing, not loadable, a contract this code cannot honour
        print(f"mer-score: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    finally:
        close_bar()
    summary = {"inputs": [str(p) for p in args.inputs], "engine": args.engine, **stats.summary()}
    out.write_summary(summary)
    print(_summary_line(summary), file=sys.stderr)
    return 0


def _run(
    args: argparse.Namespace,
    settings: Settings,
    limits: Limits,
    out: OutputFolder,
    progress: Callable[[int, float], None],
) -> JobStats:
    items = iter_tracks(args.inputs)
    if args.engine == "ray":
        from app.batch.cluster import RayOptions, run_ray  # Ray is an optional extra

        options = RayOptions(
            address=args.address,
            extract_actors=args.extract_actors,
            predict_actors=args.predict_actors,
            gpus_per_actor=args.gpus_per_actor,
            chunk=args.chunk,
        )
        return run_ray(
            args.model, limits, settings.providers, items, out, options, limit=args.limit, progress=progress
        )
    # One ONNX Runtime thread per call: the job's parallelism is across tracks, one per worker thread.
    predictor = Predictor.load(args.model, providers=settings.providers, intra_op_threads=1)
    return run_local(
        Scorer(predictor, limits), items, out, workers=args.workers, limit=args.limit, progress=progress
    )


def _progress_bar(
    total: int | None, *, disabled: bool
) -> tuple[Callable[[int, float], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="track", disable=disabled, dynamic_ncols=True, smoothing=0.1)
    audio = [0.0]

    def update(n: int, seconds: float) -> None:
        audio[0] += seconds
        elapsed = bar.format_dict.get("elapsed") or 1e-9
        bar.set_postfix_str(f"{_hours(audio[0])} audio, {audio[0] / elapsed:.0f}x real time", refresh=False)
        bar.update(n)

    return update, bar.close


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _summary_line(summary: dict[str, Any]) -> str:
    return (
        f"done {summary['done']}, failed {summary['failed']}, skipped {summary['skipped']}; "
        f"{summary['audio_hours']:.3f} h of audio in {summary['wall_s']:.1f} s "
        f"({summary['tracks_per_s']:.2f} tracks/s, {summary['x_realtime']:.0f}x real time); "
        f"failures by code: {json.dumps(summary['failures_by_code'])}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
