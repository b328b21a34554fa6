"""Benchmark: the batch job (mer-score) against bare extraction, its memory over a long run, and Ray.

Measured in one run, on deterministic synthetic clips (WAV, written before any timing):

* ``bare``: decode + feature extraction of every clip with a thread per core (``ThreadPoolExecutor``
  over :meth:`app.batch.scoring.Scorer.extract`): the ceiling of any scoring job on this machine.
* ``local``: :func:`app.batch.local.run_local`, the whole job (decode, extract, predict, summaries,
  Parquet parts) with the same threads. Expected: >= 90 % of ``bare``'s throughput.
* ``rss``: the local engine over ``--rss-clips`` clips in a fresh process, its resident memory
  sampled every 100 tracks: flat when the job's memory is bounded by its window and one part.
* ``ray``: the same job as ``local`` through Ray Data on a local two-node cluster (one CPU per node,
  so both engines get the same cores), against ``local``: Ray's overhead at this scale.

Run from the repository root (the ``cluster`` extra installed for ``ray``)::

    .venv/bin/python bench/batch.py                          # 200 clips of 10 s, 1000 for the RSS run
    .venv/bin/python bench/batch.py --clips 60 --no-ray

Prints a Markdown table and one JSON line; exits 0 whatever the verdict (it is a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.batch.local import run_local
from app.batch.output import OutputFolder
from app.batch.scoring import Limits, Scorer
from app.batch.tracks import Track, iter_tracks
from app.core.predictor import Predictor
from model_export.testing import encode, local_ray_cluster, synth_music

EXPECTED_LOCAL_VS_BARE = 0.90
LIMITS = Limits(max_duration_s=900.0, max_decoded_samples=172_800_000)
RATE = 22_050  # decoded and resampled to the model's 16 kHz, as real files are

_RSS_CHILD = """
import json, sys, resource
from pathlib import Path
from app.batch.local import run_local
from app.batch.output import OutputFolder
from app.batch.scoring import Limits, Scorer
from app.batch.tracks import iter_tracks
from app.core.predictor import Predictor

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

folder, out, workers, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
scorer = Scorer(Predictor.load(model, intra_op_threads=1), Limits(900.0, 172_800_000))
samples, seen = [], [0]
def progress(n, _):
    seen[0] += n
    if seen[0] % 100 == 0:
        samples.append([seen[0], rss_mib()])
run_local(scorer, iter_tracks([folder]), OutputFolder(Path(out), "parquet"), workers=workers,
          progress=progress)
print(json.dumps({"samples": samples, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_clips(folder: Path, count: int, duration_s: float) -> float:
    """Write ``count`` distinct clips; return their total duration in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"clip{i:05d}.wav"
        if not path.exists():
            path.write_bytes(encode(synth_music(duration_s, RATE, seed=i), RATE))
    return count * duration_s


def bare(scorer: Scorer, folder: Path, workers: int) -> float:
    """Seconds to decode and extract every clip with ``workers`` threads."""
    tracks = [t for t in iter_tracks([folder]) if isinstance(t, Track)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(scorer.extract, tracks):
            pass
    return time.perf_counter() - start


def local(scorer: Scorer, folder: Path, workers: int, out: Path) -> float:
    """Seconds for the whole local job."""
    start = time.perf_counter()
    stats = run_local(scorer, iter_tracks([folder]), OutputFolder(out, "parquet"), workers=workers)
    assert stats.failed == 0
    return time.perf_counter() - start


def ray_job(model: Path, folder: Path, out: Path, address: str) -> float:
    """Seconds for the Ray job (the driver included), in a fresh process as a user would run it."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "app.batch.cli", str(folder), "--out", str(out), "--no-progress",
         "--engine", "ray", "--address", address, "--model", str(model)],
        check=True, capture_output=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/default.onnx"))
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--rss-clips", type=int, default=1000)
    p.add_argument("--rss-duration", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()
    scorer = Scorer(Predictor.load(args.model, intra_op_threads=1), LIMITS)
    with tempfile.TemporaryDirectory(prefix="mer-bench-") as tmp:
        root = Path(tmp)
        audio_s = write_clips(root / "clips", args.clips, args.duration)
        scorer.extract(next(t for t in iter_tracks([root / "clips"]) if isinstance(t, Track)))  # warm
        bare_s, local_s = [], []
        for r in range(args.repeats):  # interleaved, so both see the same machine load
            bare_s.append(bare(scorer, root / "clips", args.workers))
            local_s.append(local(scorer, root / "clips", args.workers, root / f"out{r}"))
        ray_s: list[float] = []
        if not args.no_ray:
            with local_ray_cluster(nodes=2, cpus_per_node=max(1, args.workers // 2)) as address:
                for r in range(args.repeats):
                    ray_s.append(ray_job(args.model, root / "clips", root / f"ray{r}", address))
        write_clips(root / "many", args.rss_clips, args.rss_duration)
        child = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(root / "many"), str(root / "rss"), str(args.workers),
             str(args.model)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rss = json.loads(child.stdout.strip().splitlines()[-1])
    b, loc = statistics.median(bare_s), statistics.median(local_s)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "model": str(args.model),
        "clips": args.clips,
        "clip_s": args.duration,
        "workers": args.workers,
        "bare_s": b,
        "local_s": loc,
        "bare_x_realtime": audio_s / b,
        "local_x_realtime": audio_s / loc,
        "local_vs_bare": b / loc,
        "ray_s": statistics.median(ray_s) if ray_s else None,
        "ray_vs_local": loc / statistics.median(ray_s) if ray_s else None,
        "rss_samples_mib": rss["samples"],
        "rss_peak_mib": rss["peak_mib"],
    }
    print(f"| engine | median s ({args.repeats} runs) | × real time | tracks/s | ratio |")
    print("|---|---|---|---|---|")
    print(f"| bare decode + extract | {b:.2f} | {audio_s / b:.1f} | {args.clips / b:.2f} | 1 |")
    print(f"| local job | {loc:.2f} | {audio_s / loc:.1f} | {args.clips / loc:.2f} | {b / loc:.1%} of bare |")
    if ray_s:
        ray = statistics.median(ray_s)
        row = f"{ray:.2f} | {audio_s / ray:.1f} | {args.clips / ray:.2f} | {loc / ray:.1%} of local"
        print(f"| Ray job, 2 nodes | {row} |")
    samples = ", ".join(f"{n}: {m:.0f}" for n, m in rss["samples"])
    print(f"\nRSS (MiB) after N of {args.rss_clips} tracks: {samples}; peak {rss['peak_mib']:.0f}")
    verdict = "PASS" if b / loc >= EXPECTED_LOCAL_VS_BARE else "BELOW"
    print(
        f"local job at {b / loc:.1%} of bare extraction (expected >= {EXPECTED_LOCAL_VS_BARE:.0%}): {verdict}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
