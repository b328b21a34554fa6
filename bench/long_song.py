"""Long songs: chunked extraction against one pass, one song on 1 vs 2 workers, memory of a 10-minute song.

Real recordings from Debian packages (``model_export.real_music``: Muldjord's metal songs and the
Drascula soundtrack, fetched into ``cache/real_music`` at run time, never committed), decoded to the
model's analysis rate. Four parts, each printing same-run figures:

1. **Deviation** of chunked extraction from one openSMILE pass, for each ``--grid`` entry
   ``CHUNK:PREROLL`` (frames): over every frame and feature of every track, max / median / 99.9th
   percentile of ``|dz|`` (features standardised with the model's contract), the share of values with
   ``|dz| > 0.01``, and max / mean ``|dy|`` of the model's outputs.
2. **Extraction speed** of a 3-minute song: one pass, the model's chunk layout one chunk after another,
   and the same layout on a 2-thread pool (the service's runner): medians of ``--repeats``.
3. **Service wall time** of ``POST /v1/predict`` with that song (16 kHz FLAC) against a real uvicorn
   with ``MER_POOL_WORKERS=1`` and ``=2``, and the latency of a 30 s clip sent while a 10-minute song
   is being processed (a long song must not hold the pool).
4. **Memory**: a fresh server's resident memory when idle (after one 30 s request) and its peak
   (``VmHWM``, reset through ``/proc/PID/clear_refs`` before the request) while it answers one
   10-minute song (a real song looped, 44.1 kHz stereo Ogg Vorbis as a user would send it), for each
   ``--slice-frames`` value (``MER_INFER_SLICE_FRAMES``: 0 runs the whole clip through the sequence
   graph, N > 0 runs a longer clip through the step graph in slices of N frames); and, in this
   process, the inference time of that song's features each way (medians) and the largest difference
   between the two outputs.

``--compare-model`` runs parts 3 and 4 for a second model too (e.g. the one-pass 2.0.0 from git), so
the ratios are same-run. Run: ``python bench/long_song.py`` (``make bench-long``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.core.audio import decode  # noqa: E402 - after the path set-up
from app.core.contract import FeatureConfig  # noqa: E402
from app.core.features import FeatureExtractor, chunk_layout  # noqa: E402
from app.core.predictor import Predictor  # noqa: E402
from app.serving.pool import PoolChunkRunner  # noqa: E402
from bench.infer import median_seconds  # noqa: E402
from model_export.real_music import fetch, find_tracks, load_track  # noqa: E402
from model_export.testing import encode, synth_music  # noqa: E402

SONG_S = 180.0
LONG_S = 600.0


def deviation(
    signals: list[tuple[str, np.ndarray]], predictor: Predictor, grid: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Part 1: chunked against one pass for every grid entry."""
    contract = predictor.contract
    one_pass = FeatureExtractor(replace(contract.features, chunk_frames=0, chunk_preroll_frames=0))
    reference = []
    for _, signal in signals:
        values = one_pass.extract(signal).values
        reference.append((contract.normalise(values), predictor.predict(values)))
    rows = []
    for chunk, preroll in grid:
        fx = FeatureExtractor(replace(contract.features, chunk_frames=chunk, chunk_preroll_frames=preroll))
        dz_parts, dy_parts, worst = [], [], (0.0, "", "")
        for (name, signal), (z_ref, y_ref) in zip(signals, reference, strict=True):
            values = fx.extract(signal).values
            dz = np.abs(contract.normalise(values) - z_ref)
            dz_parts.append(dz.ravel())
            dy_parts.append(np.abs(predictor.predict(values) - y_ref).ravel())
            if dz.max() > worst[0]:
                worst = (float(dz.max()), name, fx.feature_names[int(dz.max(axis=0).argmax())])
        dz_all, dy_all = np.concatenate(dz_parts), np.concatenate(dy_parts)
        rows.append(
            {
                "chunk": chunk,
                "preroll": preroll,
                "dz_max": float(dz_all.max()),
                "dz_median": float(np.median(dz_all)),
                "dz_p999": float(np.quantile(dz_all, 0.999)),
                "dz_over_001": float(np.mean(dz_all > 0.01)),
                "dy_max": float(dy_all.max()),
                "dy_mean": float(dy_all.mean()),
                "worst": f"{worst[2]} in {worst[1]}",
            }
        )
    return rows


def extraction_speed(signal: np.ndarray, config: FeatureConfig, repeats: int) -> dict[str, float]:
    """Part 2: one pass, chunks in sequence, chunks on a 2-thread pool (seconds, medians)."""
    chunked = config if config.chunked else replace(config, chunk_frames=60, chunk_preroll_frames=4)
    one_pass = FeatureExtractor(replace(config, chunk_frames=0, chunk_preroll_frames=0))
    fx = FeatureExtractor(chunked)
    with ThreadPoolExecutor(2) as pool:
        runner = PoolChunkRunner(pool, 1, contextlib.nullcontext)
        # The caller is a pool thread in the service: submit the whole extraction to the pool too.
        return {
            "one_pass": median_seconds(lambda: one_pass.extract(signal), repeats),
            "chunks_in_sequence": median_seconds(lambda: fx.extract(signal), repeats),
            "chunks_on_2_threads": median_seconds(
                lambda: pool.submit(fx.extract, signal, runner).result(), repeats
            ),
            # The machine's own ceiling: two independent one-pass extractions at once vs one alone.
            "two_independent": median_seconds(
                lambda: [f.result() for f in [pool.submit(one_pass.extract, signal) for _ in range(2)]],
                repeats,
            ),
            "chunks": float(len(chunk_layout(signal.size // chunked.window_samples, chunked))),
        }


@contextlib.contextmanager
def server(model: Path, workers: int, slice_frames: int | None = None) -> Iterator[tuple[str, int]]:
    """A real uvicorn on loopback serving ``model`` with ``workers`` pool threads: (url, pid).

    ``slice_frames`` sets ``MER_INFER_SLICE_FRAMES`` (None: the service's default).
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "MER_MODEL_PATH": str(model), "MER_POOL_WORKERS": str(workers)}
    env |= {"MER_LOG_LEVEL": "warning", "MER_REQUEST_TIMEOUT_S": "600", "MALLOC_ARENA_MAX": "2"}
    if slice_frames is not None:
        env["MER_INFER_SLICE_FRAMES"] = str(slice_frames)
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server for {model} did not start")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url: str, body: bytes, name: str) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/predict", files={"file": (name, body)}, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0


def service_speed(model: Path, song: bytes, short: bytes, long: bytes, repeats: int) -> dict[str, float]:
    """Part 3: the song's wall time with 1 and 2 workers; a short clip's latency beside a long song."""
    out: dict[str, float] = {}
    for workers in (1, 2):
        with server(model, workers) as (url, _):
            post(url, short, "short.flac")  # warm-up
            out[f"song_{workers}w"] = statistics.median(post(url, song, "song.flac") for _ in range(repeats))
            if workers == 2:
                out["short_alone"] = statistics.median(post(url, short, "short.flac") for _ in range(3))
                done = threading.Event()

                def long_request(url: str = url, done: threading.Event = done) -> None:
                    post(url, long, "long.ogg")
                    done.set()

                t = threading.Thread(target=long_request)
                t.start()
                time.sleep(1.5)  # the long song is decoded and its chunks are on the pool
                out["short_beside_long"] = post(url, short, "short.flac")
                out["long_still_running"] = float(not done.is_set())
                t.join()
    return out


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def memory(model: Path, short: bytes, long: bytes, slice_frames: int) -> dict[str, float]:
    """Part 4: idle resident memory and the peak while answering one 10-minute song (MiB)."""
    with server(model, 2, slice_frames) as (url, pid):
        post(url, short, "short.flac")
        time.sleep(1.0)
        idle = status_mib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        post(url, long, "long.ogg")
        return {"idle": idle, "peak": status_mib(pid, "VmHWM"), "after": status_mib(pid, "VmRSS")}


def inference_slices(
    model: Path, long: bytes, slice_frames: list[int], repeats: int, peaks: dict[int, float]
) -> None:
    """Part 4, in this process: the long song's inference each way, medians, and their difference."""
    base = Predictor.load(model, providers="cpu", intra_op_threads=1, slice_frames=0)
    x = (
        FeatureExtractor(base.contract.features)
        .extract(decode(long, base.contract.features.sample_rate))
        .values
    )
    outputs: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    for frames in slice_frames:
        predictor = Predictor.load(model, providers="cpu", intra_op_threads=1, slice_frames=frames)
        outputs[frames] = predictor.predict(x)
        times[frames] = median_seconds(functools.partial(predictor.predict, x), repeats)
        how = "slices" if predictor.slices_for(len(x)) else "whole clip"
        print(
            f"  inference of its {len(x)} frames, MER_INFER_SLICE_FRAMES={frames} ({how}): "
            f"{times[frames]:.3f} s"
        )
    first = slice_frames[0]
    for frames in slice_frames[1:]:
        print(
            f"  MER_INFER_SLICE_FRAMES={frames} vs {first}: inference "
            f"{times[first] / times[frames]:.2f}x faster, "
            f"peak memory +{peaks[frames]:.0f} vs +{peaks[first]:.0f} MiB, "
            f"max |dy| {float(np.max(np.abs(outputs[frames] - outputs[first]))):.1e}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "default.onnx")
    p.add_argument("--compare-model", type=Path, default=None, help="a second model for parts 3 and 4")
    p.add_argument("--grid", nargs="*", default=["60:0", "60:2", "60:4", "60:10", "120:4"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cache", type=Path, default=REPO / "cache" / "real_music")
    p.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--song-s", type=float, default=SONG_S, help="length of the song of parts 2 and 3")
    p.add_argument("--long-s", type=float, default=LONG_S, help="length of the long song of parts 3 and 4")
    p.add_argument(
        "--slice-frames",
        nargs="+",
        type=int,
        default=[0, 240],
        help="MER_INFER_SLICE_FRAMES values of part 4",
    )
    p.add_argument(
        "--synthetic", action="store_true", help="synthesised music instead of the Debian recordings (tests)"
    )
    args = p.parse_args()

    predictor = Predictor.load(args.model, providers="cpu", intra_op_threads=1)
    rate = predictor.contract.features.sample_rate
    song_s, long_s = args.song_s, args.long_s
    if args.synthetic:
        signals = [(f"synth-{i}", synth_music(song_s + 10 * i, rate, seed=i)) for i in range(2)]
        long_source: tuple[np.ndarray, int] = (signals[0][1][:, None], rate)
    else:
        tracks = find_tracks(fetch(args.cache))
        signals = [(t.name, load_track(t, rate)) for t in tracks]
        first_long = next(i for i, (_, s) in enumerate(signals) if s.size >= song_s * rate)
        native, native_rate = sf.read(str(tracks[first_long].files[0]), dtype="float32", always_2d=True)
        long_source = (native, native_rate)
    minutes = sum(s.size for _, s in signals) / rate / 60
    kind = "synthesised" if args.synthetic else "real"
    print(f"{len(signals)} {kind} tracks, {minutes:.1f} min; model {args.model.name}")
    print(f"features: {predictor.contract.features}")

    if 1 in args.parts:
        grid = [tuple(int(v) for v in g.split(":")) for g in args.grid]
        head = (
            "| chunk | pre-roll | max dz | median dz | p99.9 dz | dz > 0.01 | max dy | mean dy | largest dz |"
        )
        print("\n" + head)
        print("|---|---|---|---|---|---|---|---|---|")
        for r in deviation(signals, predictor, grid):  # type: ignore[arg-type]
            print(
                f"| {r['chunk']} | {r['preroll']} | {r['dz_max']:.2f} | {r['dz_median']:.1e} | "
                f"{r['dz_p999']:.3f} | {100 * r['dz_over_001']:.2f} % | {r['dy_max']:.4f} | "
                f"{r['dy_mean']:.4f} | {r['worst']} |"
            )

    song = next(s for _, s in signals if s.size >= song_s * rate)[: int(song_s * rate)]
    if 2 in args.parts:
        s = extraction_speed(song, predictor.contract.features, args.repeats)
        print(f"\nextraction of a {song_s:.0f} s song ({s['chunks']:.0f} chunks), medians of {args.repeats}:")
        print(
            f"  one pass {s['one_pass']:.2f} s; chunks in sequence {s['chunks_in_sequence']:.2f} s; "
            f"on 2 threads {s['chunks_on_2_threads']:.2f} s"
        )
        print(
            f"  2 threads vs one pass: {s['one_pass'] / s['chunks_on_2_threads']:.2f}x faster; "
            f"chunking overhead in sequence {s['chunks_in_sequence'] / s['one_pass']:.3f}x"
        )
        ceiling = 2 * s["one_pass"] / s["two_independent"]
        print(
            f"  ceiling of this machine: two independent one-pass extractions on 2 threads give "
            f"{ceiling:.2f}x the throughput of one; chunked speed-up / ceiling "
            f"{s['one_pass'] / s['chunks_on_2_threads'] / ceiling:.0%}"
        )

    song_body = encode(song, rate, "FLAC")
    short_body = encode(synth_music(30.0, rate), rate, "FLAC")
    native, native_rate = long_source
    looped = np.tile(native, (int(np.ceil(long_s * native_rate / native.shape[0])), 1))[
        : int(long_s * native_rate)
    ]
    buf = io.BytesIO()
    # Block by block: libsndfile's Vorbis encoder crashes when handed minutes of audio in one write.
    with sf.SoundFile(buf, "w", native_rate, looped.shape[1], format="OGG", subtype="VORBIS") as f:
        for start in range(0, looped.shape[0], 1 << 16):
            f.write(looped[start : start + (1 << 16)])
    long_body = buf.getvalue()
    del native, looped, long_source
    assert decode(song_body, rate).size == song.size

    models = [args.model, *([args.compare_model] if args.compare_model else [])]
    for model in models:
        if 3 in args.parts:
            s = service_speed(model, song_body, short_body, long_body, args.repeats)
            print(f"\n{model.name}: POST /v1/predict, {song_s:.0f} s song, medians of {args.repeats}:")
            print(
                f"  1 worker {s['song_1w']:.2f} s, 2 workers {s['song_2w']:.2f} s: "
                f"{s['song_1w'] / s['song_2w']:.2f}x faster"
            )
            print(
                f"  30 s clip alone {s['short_alone']:.2f} s; beside a {long_s:.0f} s song "
                f"{s['short_beside_long']:.2f} s (long song still running: {bool(s['long_still_running'])})"
            )
        if 4 in args.parts:
            peaks = {}
            for frames in args.slice_frames:
                m = memory(model, short_body, long_body, frames)
                peaks[frames] = m["peak"] - m["idle"]
                print(
                    f"\n{model.name}: memory, {long_s:.0f} s song ({len(long_body) / 2**20:.1f} MiB Ogg), "
                    f"MER_INFER_SLICE_FRAMES={frames}: idle {m['idle']:.0f} MiB, peak {m['peak']:.0f} MiB "
                    f"(+{m['peak'] - m['idle']:.0f}), after {m['after']:.0f} MiB"
                )
            inference_slices(model, long_body, args.slice_frames, args.repeats, peaks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
