"""Live streams: per-frame latency over /v1/stream, and what the causal running gain does on real songs.

**Latency.** Starts the service as a uvicorn subprocess on a free 127.0.0.1 port (``--model``, default
``models/default.onnx``) and streams a real song (the first Frets on Fire song of
``model_export.real_music``, fetched from Debian at run time; a synthesised clip with ``--synthetic``)
as a browser would: mono f32le at 48 kHz (the page's format; the server resamples), 100 ms per message,
paced at 1x real time or faster. For every frame the client notes when it arrived and reports two
latencies: from sending the window's **last sample** to receiving its JSON frame, and from sending the
last sample the frame **needs** (the window plus openSMILE's 0.1 s look-ahead: the least a causal
stream can wait) to receiving it. Cells (``--cells``, ``SPEEDxSTREAMS``): one stream and
``MER_STREAM_MAX_CONCURRENT`` (8) streams at 1x, and faster-than-real-time streams, all in the same
run; ratios against the one-stream 1x cell follow the table.

**Running gain on real songs.** In-process, without HTTP: every track of ``model_export.real_music``
(32 tracks, about an hour) through (a) the served path (``FeatureExtractor`` with the model's
chunking, one gain for the whole clip), (b) one offline pass with that gain, (c) a live stream
(``app.core.stream.LiveExtractor`` with its causal running gain, 100 ms pieces, through the step
graph). It prints per-collection and overall max/mean |live - served| and |live - one pass| of arousal
and valence, and how far the running gain is from the clip's gain after 2, 10 and 30 s.

``--out FILE`` writes every number as JSON. Client and server share the machine: on a 2-core box the
client's own work is part of every latency. Run: ``python bench/stream.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# After the path set-up.
from websockets.asyncio.client import connect  # noqa: E402

from app.core.features import LOOKAHEAD_S, FeatureExtractor  # noqa: E402
from app.core.predictor import Predictor  # noqa: E402
from app.core.stream import LiveExtractor, StreamFormat  # noqa: E402
from bench.serve import free_port, wait_ready  # noqa: E402
from model_export.real_music import fetch, find_tracks, load_track  # noqa: E402
from model_export.testing import synth_music  # noqa: E402

CLIENT_RATE = 48_000
#: Messages of the running-gain part (in-process, so their size changes nothing but call counts).
PIECE_S = 0.1


@dataclass(frozen=True)
class Cell:
    """One latency measurement: pace, streams at once, message length."""

    speed: float
    streams: int
    piece_ms: int

    @classmethod
    def parse(cls, text: str) -> Cell:
        """``SPEEDxSTREAMS@MS``, e.g. ``1x8@20``: 8 streams at real time in 20 ms messages."""
        pace, _, ms = text.partition("@")
        speed, _, streams = pace.partition("x")
        return cls(float(speed), int(streams), int(ms or 20))


@dataclass
class StreamRun:
    """One stream's send times and frame arrivals."""

    sent: list[tuple[int, float]] = field(default_factory=list)  # (samples sent so far, when)
    frames: list[tuple[int, float]] = field(default_factory=list)  # (index, when received)
    close_code: int | None = None


def _sent_at(sent: list[tuple[int, float]], sample: int) -> float:
    """When the piece holding the ``sample``-th sample (1-based count) was sent."""
    counts = [c for c, _ in sent]
    i = int(np.searchsorted(counts, sample, side="left"))
    return sent[min(i, len(sent) - 1)][1]


async def _one_stream(url: str, audio: np.ndarray, cell: Cell, start: float) -> StreamRun:
    run = StreamRun()
    piece = round(cell.piece_ms * CLIENT_RATE / 1000)
    header = {"sample_rate": CLIENT_RATE, "channels": 1, "format": "f32le"}
    async with connect(url, max_size=2**20, open_timeout=30) as ws:
        await ws.send(json.dumps(header))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise SystemExit(f"stream refused: {ready}")

        async def receive() -> None:
            async for message in ws:
                now = time.perf_counter()
                m = json.loads(message)
                if m["type"] == "frame":
                    run.frames.append((int(m["index"]), now))

        receiver = asyncio.create_task(receive())
        t0 = max(time.perf_counter(), start)
        for i, offset in enumerate(range(0, len(audio), piece)):
            # Paced like a capture device: piece i leaves at t0 + i * piece / speed.
            delay = t0 + i * cell.piece_ms / 1000 / cell.speed - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = audio[offset : offset + piece]
            await ws.send(chunk.astype("<f4").tobytes())
            run.sent.append((offset + len(chunk), time.perf_counter()))
        await ws.send(json.dumps({"type": "end"}))
        await receiver
        run.close_code = ws.close_code
    return run


def _latencies(run: StreamRun, hop_s: float) -> tuple[list[float], list[float]]:
    """(window's last sample -> frame, last needed sample -> frame) in seconds, per frame."""
    window = round(hop_s * CLIENT_RATE)
    lookahead = math.ceil(LOOKAHEAD_S * CLIENT_RATE)
    total = run.sent[-1][0]
    from_window, from_needed = [], []
    for index, received in run.frames:
        end = (index + 1) * window
        from_window.append(received - _sent_at(run.sent, end))
        if end + lookahead <= total:  # the last frames are completed by `end`, not by audio
            from_needed.append(received - _sent_at(run.sent, end + lookahead))
    return from_window, from_needed


async def _cell(url: str, audio: np.ndarray, cell: Cell) -> dict[str, Any]:
    start = time.perf_counter() + 0.2
    runs = await asyncio.gather(*(_one_stream(url, audio, cell, start) for _ in range(cell.streams)))
    # Seconds of audio turned into frames per wall-clock second, over all the cell's streams.
    wall = max(run.frames[-1][1] for run in runs) - start
    throughput = cell.streams * len(audio) / CLIENT_RATE / wall
    from_window: list[float] = []
    from_needed: list[float] = []
    for run in runs:
        if run.close_code != 1000:
            raise SystemExit(f"a stream closed with {run.close_code}")
        a, b = _latencies(run, 0.5)
        from_window += a
        from_needed += b
    expected = math.floor(len(audio) / CLIENT_RATE / 0.5)
    w, n = np.array(from_window) * 1000, np.array(from_needed) * 1000
    return {
        "speed": cell.speed,
        "streams": cell.streams,
        "piece_ms": cell.piece_ms,
        "frames": len(from_window),
        "frames_expected": expected * cell.streams,
        "audio_s_per_s": round(throughput, 1),
        "from_last_sample_ms": {
            "p50": float(np.median(w)),
            "p99": float(np.percentile(w, 99)),
            "max": float(w.max()),
        },
        "from_needed_sample_ms": {
            "p50": float(np.median(n)),
            "p99": float(np.percentile(n, 99)),
            "max": float(n.max()),
        },
    }


# --- the running gain on real songs -------------------------------------------------------------------


def _live(
    extractor: FeatureExtractor, predictor: Predictor, signal: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """A live stream of ``signal`` (analysis rate, f32le, 100 ms pieces) through the step graph."""
    step = predictor.step
    assert step is not None, "the model has no step graph"
    rate = extractor.config.sample_rate
    state = step.initial_state()
    out: list[np.ndarray] = []

    def on_frame(_index: int, features: np.ndarray) -> None:
        nonlocal state
        y, state = step.step(features, state)
        out.append(y)

    live = LiveExtractor(
        extractor, StreamFormat(sample_rate=rate, channels=1, sample_format="f32le"), on_frame
    )
    try:
        piece = round(PIECE_S * rate)
        for i in range(0, len(signal), piece):
            live.push(signal[i : i + piece].astype("<f4").tobytes())
        live.finish()
    finally:
        live.close()
    return np.array(out), list(live._gain.gains_db)


def running_gain(model: Path, cache: Path, limit: int) -> dict[str, Any]:
    """Served vs one pass vs live on every real track; per-track and pooled deviations."""
    predictor = Predictor.load(model, providers="cpu", intra_op_threads=1)
    served = FeatureExtractor(predictor.contract.features)
    one_pass = FeatureExtractor(replace(predictor.contract.features, chunk_frames=0, chunk_preroll_frames=0))
    rate = served.config.sample_rate
    tracks = find_tracks(fetch(cache))
    if limit:
        tracks = tracks[:limit]
    rows = []
    for track in tracks:
        signal = load_track(track, rate)
        t0 = time.perf_counter()
        f_served = served.extract(signal)
        y_served = predictor.predict(f_served.values)
        y_pass = predictor.predict(one_pass.extract(signal).values)
        y_live, gains = _live(one_pass, predictor, signal)
        n = min(len(y_live), len(y_served))
        d_served = np.abs(y_live[:n] - y_served[:n])
        d_pass = np.abs(y_live[:n] - y_pass[:n])
        block_s = 0.4
        # The running gain of block b is used for audio in block b; compare it with the clip's gain.
        at = {
            f"{s}s": round(gains[min(int(s / block_s), len(gains) - 1)] - f_served.gain_db, 2)
            for s in (2, 10, 30)
        }
        row: dict[str, Any] = {
            "track": track.name,
            "collection": track.collection,
            "duration_s": round(len(signal) / rate, 1),
            "frames": n,
            "clip_gain_db": round(f_served.gain_db, 2),
            "running_minus_clip_gain_db": at,
            "live_vs_served": {
                "max": d_served.max(0).round(4).tolist(),
                "mean": d_served.mean(0).round(4).tolist(),
            },
            "live_vs_one_pass": {
                "max": d_pass.max(0).round(4).tolist(),
                "mean": d_pass.mean(0).round(4).tolist(),
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(
            f"  {track.name:<28} {n:>4} frames  |live-served| mean A {row['live_vs_served']['mean'][0]:.3f} "
            f"V {row['live_vs_served']['mean'][1]:.3f}  max A {row['live_vs_served']['max'][0]:.3f} "
            f"V {row['live_vs_served']['max'][1]:.3f}  gain off by "
            f"{at['2s']:+.1f}/{at['10s']:+.1f}/{at['30s']:+.1f} dB at 2/10/30 s",
            flush=True,
        )
    return {"tracks": rows, "pooled": _pooled(rows)}


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Frame-weighted means and the maxima over all tracks, per collection and overall."""
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for r in rows:
        groups.setdefault(r["collection"], []).append(r)
    out = {}
    for name, rs in groups.items():
        w = np.array([r["frames"] for r in rs], dtype=float)
        entry: dict[str, Any] = {"tracks": len(rs), "frames": int(w.sum())}
        for key in ("live_vs_served", "live_vs_one_pass"):
            mean = np.average([r[key]["mean"] for r in rs], axis=0, weights=w)
            entry[key] = {
                "mean": mean.round(4).tolist(),
                "max": np.max([r[key]["max"] for r in rs], axis=0).tolist(),
            }
        for s in ("2s", "10s", "30s"):
            off = np.abs([r["running_minus_clip_gain_db"][s] for r in rs])
            entry[f"abs_gain_error_db_{s}"] = {"median": float(np.median(off)), "max": float(off.max())}
        out[name] = entry
    return out


def _cell_line(r: dict[str, Any]) -> str:
    w, n = r["from_last_sample_ms"], r["from_needed_sample_ms"]
    return (
        f"  {r['speed']:>4g}x {r['streams']:>2} stream(s) {r['piece_ms']:>3} ms msgs: "
        f"{r['frames']:>4}/{r['frames_expected']} frames, {r['audio_s_per_s']:5.1f} audio s/s; "
        f"last sample -> frame p50 {w['p50']:6.1f} "
        f"p99 {w['p99']:6.1f} ms; needed sample -> frame p50 {n['p50']:6.1f} p99 {n['p99']:6.1f} "
        f"max {n['max']:6.1f} ms"
    )


def latency(
    model: Path, song: np.ndarray, cells: list[Cell], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every cell, one after another, against one server started for them."""
    port = free_port()
    env = {**os.environ, "MER_MODEL_PATH": str(model), "MER_LOG_LEVEL": "warning"}
    env["MER_STREAM_MAX_CONCURRENT"] = str(max(c.streams for c in cells))
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(cmd, cwd=REPO, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        out = []
        for cell in cells:
            seconds = min(args.seconds * cell.speed, args.max_seconds, len(song) / CLIENT_RATE)
            audio = song[: round(seconds * CLIENT_RATE)]
            row = asyncio.run(_cell(f"ws://127.0.0.1:{port}/v1/stream", audio, cell))
            out.append(row)
            print(_cell_line(row), flush=True)
        return out
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default.onnx")
    parser.add_argument(
        "--cells",
        nargs="+",
        default=["1x1@20", "1x1@100", "1x8@20", "20x1@20", "10x4@20", "20x4@20"],
        help="SPEEDxSTREAMS@MESSAGE_MS cells",
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="audio per stream at 1x (faster: x speed)"
    )
    parser.add_argument("--max-seconds", type=float, default=180.0, help="longest audio per stream")
    parser.add_argument("--synthetic", action="store_true", help="a synthesised clip instead of a real song")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mer-real-music")
    parser.add_argument("--tracks", type=int, default=0, help="real tracks for the running gain (0: all)")
    parser.add_argument(
        "--parts", nargs="+", choices=["latency", "gain"], default=["latency", "gain"], help="what to run"
    )
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()}}
    if "latency" in args.parts:
        results["latency"] = _latency_part(args)
    if "gain" in args.parts:
        print("running gain vs the clip's gain, on real songs (in-process):")
        gain = running_gain(args.model, args.cache, args.tracks)
        results["running_gain"] = gain
        for name, g in gain["pooled"].items():
            print(_pooled_line(name, g))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def _latency_part(args: argparse.Namespace) -> dict[str, Any]:
    if args.synthetic:
        song = synth_music(args.max_seconds, CLIENT_RATE, seed=1)
        source = f"synthesised {args.max_seconds:g} s"
    else:
        track = find_tracks(fetch(args.cache))[0]
        song = load_track(track, CLIENT_RATE)
        source = f"{track.name} ({len(song) / CLIENT_RATE:.0f} s)"
    cells = [Cell.parse(c) for c in args.cells]
    print(f"latency: {source} as {CLIENT_RATE} Hz mono f32le, {os.cpu_count()} cores")
    rows = latency(args.model, song, cells, args)
    base = rows[0]
    print(
        "same-run ratios (p50 needed sample -> frame) vs the first cell "
        f"({base['speed']:g}x {base['streams']} stream(s), {base['piece_ms']} ms messages):"
    )
    for r in rows[1:]:
        ratio = r["from_needed_sample_ms"]["p50"] / base["from_needed_sample_ms"]["p50"]
        print(f"  {r['speed']:g}x {r['streams']} stream(s) {r['piece_ms']} ms: {ratio:.2f}x")
    return {"source": source, "client_rate": CLIENT_RATE, "cells": rows}


def _pooled_line(name: str, g: dict[str, Any]) -> str:
    s, p = g["live_vs_served"], g["live_vs_one_pass"]
    return (
        f"  {name:<36} {g['tracks']:>2} tracks {g['frames']:>5} frames: |live-served| "
        f"mean A {s['mean'][0]:.3f} V {s['mean'][1]:.3f} max A {s['max'][0]:.3f} V {s['max'][1]:.3f}; "
        f"|live-one pass| mean A {p['mean'][0]:.3f} V {p['mean'][1]:.3f}; |gain error| median "
        f"{g['abs_gain_error_db_2s']['median']:.1f}/{g['abs_gain_error_db_10s']['median']:.1f}/"
        f"{g['abs_gain_error_db_30s']['median']:.1f} dB at 2/10/30 s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
