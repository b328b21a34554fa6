"""HTTP serving benchmark: throughput and p50/p99 latency per route and concurrency, on loopback.

Starts the service as a uvicorn subprocess on a free 127.0.0.1 port (``--model``, default
``models/default.onnx``; when that file does not exist, a tiny model with random weights is exported
to a temporary directory, which needs the ``train`` extra), then drives it with httpx from this
process:

* ``predict``: ``POST /v1/predict`` with a synthesised 30 s music clip (WAV, 16 kHz mono);
* ``features-json``: ``POST /v1/predict/features`` with that clip's 60 x 6373 features as JSON;
* ``features-npy``: the same features as a float32 ``.npy`` body;

each at concurrency 1, 4 and 16 (``--concurrency``), ``--requests`` requests per cell and at most
``--cell-seconds`` per cell. Bodies are encoded once up front, so the client measures the server. The
mean inference batch per cell comes from the server's own ``/metrics``.

References measured in the same run, before the server starts: the bare pipeline's extraction alone
(``app.core.features`` on the 30 s clip from one thread per core) and the ``Predictor`` alone at its best
batch (1, 4 or 16 clips per call, ``intra_op_threads`` = 0). After the main cells the server is started
again with ``MER_MAX_BATCH=1`` (dynamic batching off) and the routes run once more at the highest
concurrency. The table is followed by ratios: npy vs JSON throughput, each route's highest
concurrency vs concurrency 1, the audio route against bare extraction, the npy route against bare
inference, and batching on vs off.

Client and server share the machine: on a 2-core box the client's own work is part of every number.
Run: ``python bench/serve.py [--requests 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model_export.testing import export_tiny_model, synth_music  # noqa: E402 - after the path set-up

ROUTES = ("predict", "features-json", "features-npy")
CLIP_S = 30.0
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Body:
    """A request encoded once up front."""

    path: str
    content: bytes
    content_type: str


@dataclass
class Cell:
    """One route at one concurrency."""

    route: str
    concurrency: int
    sent: int
    ok: int
    seconds: float
    latencies_s: list[float]
    batches: float
    clips: float

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile of the successful requests, milliseconds."""
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MER_MODEL_PATH": str(model),
        "MER_MAX_WAIT_MS": str(args.max_wait_ms),
        "MER_MAX_BATCH": str(args.max_batch),
        "MER_POOL_WORKERS": str(args.pool_workers),
        "MER_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            r = httpx.get(f"{url}/v2/health/ready", timeout=2)
            if r.status_code == 200:
                return
            reason = r.json().get("error", {}).get("message", "")
            if "not usable" in reason or "no model" in reason:
                raise SystemExit(f"the server is not ready: {reason}")
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready in time")


def batch_counters(url: str) -> tuple[float, float]:
    """(inference calls, clips) so far, from the server's metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    count = re.search(r"^mer_batch_size_count (\S+)$", text, re.MULTILINE)
    total = re.search(r"^mer_batch_size_sum (\S+)$", text, re.MULTILINE)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


async def run_cell(
    url: str, route: str, body: Body, concurrency: int, requests: int, cell_seconds: float
) -> Cell:
    latencies: list[float] = []
    sent = ok = 0
    calls0, clips0 = batch_counters(url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        stop_at = start + cell_seconds

        async def worker() -> None:
            nonlocal sent, ok
            while sent < requests and time.perf_counter() < stop_at:
                sent += 1
                t0 = time.perf_counter()
                r = await client.post(
                    body.path, content=body.content, headers={"content-type": body.content_type}
                )
                if r.status_code == 200:
                    ok += 1
                    latencies.append(time.perf_counter() - t0)
                else:
                    print(f"  {route}: HTTP {r.status_code} {r.text[:200]}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    calls1, clips1 = batch_counters(url)
    return Cell(route, concurrency, sent, ok, seconds, latencies, calls1 - calls0, clips1 - clips0)


def bodies() -> dict[str, Body]:
    import soundfile as sf

    from app.core.contract import FeatureConfig
    from app.core.features import FeatureExtractor

    signal = synth_music(CLIP_S, SAMPLE_RATE)
    wav = io.BytesIO()
    sf.write(wav, signal, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    upload = httpx.Request("POST", "http://x/", files={"file": ("clip.wav", wav.getvalue(), "audio/wav")})
    features = FeatureExtractor(FeatureConfig(sample_rate=SAMPLE_RATE)).extract(signal).values
    npy = io.BytesIO()
    np.save(npy, features)
    return {
        "predict": Body("/v1/predict", upload.read(), upload.headers["content-type"]),
        "features-json": Body(
            "/v1/predict/features", json.dumps({"features": features.tolist()}).encode(), "application/json"
        ),
        "features-npy": Body("/v1/predict/features", npy.getvalue(), "application/x-npy"),
    }


def bare_extraction(signal: np.ndarray, count: int) -> float:
    """Audio seconds extracted per wall second, ``count`` clips over one thread per core."""
    from concurrent.futures import ThreadPoolExecutor

    from app.core.contract import FeatureConfig
    from app.core.features import FeatureExtractor

    extractor = FeatureExtractor(FeatureConfig(sample_rate=SAMPLE_RATE))
    extractor.extract(signal[:SAMPLE_RATE])  # warm-up
    workers = os.cpu_count() or 1
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda _: extractor.extract(signal), range(count)))
    return count * signal.size / SAMPLE_RATE / (time.perf_counter() - start)


def bare_inference(model: Path, features: np.ndarray, seconds: float) -> tuple[float, int]:
    """(clips per second, batch) of the predictor alone at its best batch size."""
    from app.core.predictor import Predictor

    predictor = Predictor.load(model, providers="cpu", intra_op_threads=0)
    best = (0.0, 1)
    for batch in (1, 4, 16):
        clips = [features] * batch
        predictor.predict_batch(clips)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < seconds:
            predictor.predict_batch(clips)
            calls += 1
        best = max(best, (calls * batch / (time.perf_counter() - start), batch))
    return best


def report(
    cells: list[Cell],
    sizes: dict[str, int],
    references: dict[str, float] | None = None,
    unbatched: dict[str, Cell] | None = None,
) -> None:
    print()
    print("| route | body | concurrency | ok/sent | req/s | audio s/s | p50 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        batch = c.clips / c.batches if c.batches else float("nan")
        print(
            f"| {c.route} | {sizes[c.route] / 1e6:.2f} MB | {c.concurrency} | {c.ok}/{c.sent} | "
            f"{c.throughput:.2f} | {c.throughput * CLIP_S:.1f} | {c.percentile_ms(50):.0f} | "
            f"{c.percentile_ms(99):.0f} | {batch:.2f} |"
        )
    by = {(c.route, c.concurrency): c for c in cells}
    levels = sorted({c.concurrency for c in cells})
    print()
    for level in levels:
        npy, js = by.get(("features-npy", level)), by.get(("features-json", level))
        if npy and js and js.throughput:
            print(f"npy vs JSON throughput at concurrency {level}: {npy.throughput / js.throughput:.2f}x")
    top = levels[-1]
    for route in ROUTES:
        one, many = by.get((route, 1)), by.get((route, top))
        if one and many and one.throughput and top != 1:
            print(
                f"{route}: concurrency {top} vs 1 throughput: {many.throughput / one.throughput:.2f}x "
                f"(mean batch {many.clips / many.batches if many.batches else float('nan'):.2f})"
            )
    refs = references or {}
    if "extraction_audio_s" in refs:
        print(f"bare extraction: {refs['extraction_audio_s']:.1f} audio s/s on {os.cpu_count()} threads")
        for level in levels:
            cell = by.get(("predict", level))
            if cell:
                share = cell.throughput * CLIP_S / refs["extraction_audio_s"]
                print(f"predict at concurrency {level} vs bare extraction: {100 * share:.0f} %")
    if "inference_clips" in refs:
        print(f"bare inference: {refs['inference_clips']:.1f} clips/s at batch {refs['inference_batch']:.0f}")
        for level in levels:
            cell = by.get(("features-npy", level))
            if cell:
                print(
                    f"features-npy at concurrency {level} vs bare inference: "
                    f"{100 * cell.throughput / refs['inference_clips']:.0f} %"
                )
    for route, off in (unbatched or {}).items():
        on = by.get((route, off.concurrency))
        if on and off.throughput:
            print(
                f"{route} at concurrency {off.concurrency}: batching on vs off (MER_MAX_BATCH=1) "
                f"{on.throughput / off.throughput:.2f}x ({on.throughput:.2f} vs {off.throughput:.2f} req/s)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default.onnx")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per cell (at most)")
    parser.add_argument("--cell-seconds", type=float, default=60.0, help="time limit per cell")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="MER_MAX_WAIT_MS for the server")
    parser.add_argument("--max-batch", type=int, default=16, help="MER_MAX_BATCH for the server")
    parser.add_argument("--pool-workers", type=int, default=0, help="MER_POOL_WORKERS (0: one per core)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mer-bench-") as tmp:
        model = args.model
        if not model.is_file():
            print(f"{model} does not exist: exporting a tiny model with random weights", file=sys.stderr)
            model = export_tiny_model(Path(tmp), name="tiny-bench", version="0")
        requests = bodies()
        sizes = {name: len(body.content) for name, body in requests.items()}
        signal = synth_music(CLIP_S, SAMPLE_RATE)
        features = np.load(io.BytesIO(requests["features-npy"].content))
        references = {"extraction_audio_s": bare_extraction(signal, 2 * (os.cpu_count() or 1))}
        clips_per_s, batch = bare_inference(model, features, seconds=min(3.0, args.cell_seconds))
        references |= {"inference_clips": clips_per_s, "inference_batch": float(batch)}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(model, port, args)
        try:
            wait_ready(url, server)
            card = httpx.get(f"{url}/v1/models/default").json()
            print(
                f"model {card['name']} {card['version']} on {card['provider']}, {os.cpu_count()} cores, "
                f"load average {os.getloadavg()[0]:.1f} at start; {args.requests} requests per cell"
            )
            cells = []
            for route in args.routes:
                asyncio.run(run_cell(url, route, requests[route], 1, 1, args.cell_seconds))  # warm-up
                for level in args.concurrency:
                    cell = asyncio.run(
                        run_cell(url, route, requests[route], level, args.requests, args.cell_seconds)
                    )
                    print(
                        f"  {route} x{level}: {cell.ok}/{cell.sent} ok in {cell.seconds:.1f} s",
                        file=sys.stderr,
                    )
                    cells.append(cell)
        finally:
            server.terminate()
            server.wait(timeout=60)
        unbatched = {}
        top = max(args.concurrency)
        if top > 1:
            off_args = argparse.Namespace(**{**vars(args), "max_batch": 1})
            server = start_server(model, port, off_args)
            try:
                wait_ready(url, server)
                for route in args.routes:
                    asyncio.run(run_cell(url, route, requests[route], 1, 1, args.cell_seconds))  # warm-up
                    unbatched[route] = asyncio.run(
                        run_cell(url, route, requests[route], top, args.requests, args.cell_seconds)
                    )
            finally:
                server.terminate()
                server.wait(timeout=60)
    report(cells, sizes, references, unbatched)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
