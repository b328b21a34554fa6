"""Inference speed: ONNX Runtime vs PyTorch eager, and achieved GFLOP/s vs a numpy matmul.

For every thread count (default 1 and 2) a fresh worker process is started with the BLAS/OpenMP thread
variables set before numpy, torch and onnxruntime are imported (numpy's BLAS reads them only at
import). Each worker builds the preset (default ``LSTM_AT_400``) with seeded random weights (speed does
not depend on the weights), exports it exactly as ``python -m model_export export`` does, and times in
the same process, for each batch size (default 1 and 16) of 61-frame clips (a 30.5 s excerpt):

* ONNX Runtime, CPU provider, all graph optimisations, ``intra_op_num_threads`` = threads;
* PyTorch eager, ``torch.inference_mode()``, ``torch.set_num_threads(threads)``, the same module that
  was exported (normaliser + model);
* numpy ``float32`` matmul of the shape that dominates the model, ``(B*61, 6373) @ (6373, 4H)`` (the
  input projection of the first LSTM layer), as the machine's practical dense-algebra ceiling;
* the shipped ``models/default.onnx`` in ONNX Runtime too, when it exists.

The model's FLOPs are counted analytically (:func:`model_flops`: LSTM gates, attention, output layer;
elementwise work ignored), so "achieved GFLOP/s" is that count divided by ONNX Runtime's time. Every
time is the median of ``--repeats`` runs after ``--warmup`` runs. Run: ``python bench/infer.py``.

``--profile`` also runs ONNX Runtime's node profiler on the same graph and inputs and splits its
kernel time into the graph's parts (:func:`node_parts`: the ``LSTM`` node, the in-graph normaliser,
the attention window, the rest). From that split it prints the graph's *ceiling* on this machine:
the ORT / matmul ratio it would reach if the LSTM's FLOPs ran at the matmul's speed and every other
part took what it took (:func:`ceiling_vs_matmul`), so a target above the ceiling is seen to need
less element-wise work, not a faster GEMM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_export.model import ModelConfig

REPO = Path(__file__).resolve().parent.parent
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def model_flops(config: ModelConfig, frames: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one clip of ``frames`` frames through ``config``'s model."""
    flops = lstm_flops(config, frames)
    top = config.hidden_sizes[-1]
    out_in = top
    if config.kind == "AT":
        a, w = config.attention_size, config.attention_window
        flops += 2.0 * 2 * top * a * frames  # query of h_{t-1} and key of every h_j
        flops += 2.0 * w * a * frames  # v^T sigmoid(.) over the window
        flops += 2.0 * w * top * frames  # context: weighted sum of the window's states
        out_in = 2 * top
    outputs = config.num_outputs
    flops += 2.0 * outputs * (out_in + (outputs if config.output_feedback else 0)) * frames
    return flops


#: The graph's parts by exported node name (``torch.onnx`` names nodes by module path), in match order.
PART_PREFIXES = (
    ("normaliser", "/normaliser/"),
    ("attention", "/model/attention/"),
    ("smoothing", "/smoother/"),
)


def node_parts(events: list[dict[str, Any]]) -> dict[str, float]:
    """Kernel microseconds per part of the graph from ONNX Runtime profiler events.

    Args:
        events: The JSON list written by ``InferenceSession.end_profiling()``.

    Returns:
        ``{"lstm": us, "normaliser": us, "attention": us, "smoothing": us, "other": us}`` summed over
        every profiled run; ``lstm`` is the ``LSTM`` nodes (the gates' GEMMs and the recurrence).
    """
    parts = dict.fromkeys(("lstm", "normaliser", "attention", "smoothing", "other"), 0.0)
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name.removesuffix("_kernel_time")
        if (e.get("args") or {}).get("op_name") == "LSTM":
            part = "lstm"
        else:
            part = next((p for p, prefix in PART_PREFIXES if node.startswith(prefix)), "other")
        parts[part] += float(e.get("dur", 0.0))
    return parts


def ceiling_vs_matmul(
    parts_us: dict[str, float], lstm_flops: float, model_flops: float, matmul_flops_s: float
) -> float:
    """The highest ORT / matmul ratio this graph can reach while its other parts cost what they cost.

    The LSTM nodes are given the matmul's speed (their input projection is that very GEMM shape: no
    runtime beats its own BLAS on it), or their measured time where that is faster already (small
    shapes, where numpy's BLAS is slow); the normaliser, attention and the rest keep their measured
    kernel time. Ratio = (model FLOPs / that time) / matmul FLOP/s.
    """
    lstm_s = min(parts_us["lstm"] / 1e6, lstm_flops / matmul_flops_s)
    rest_s = sum(v for k, v in parts_us.items() if k != "lstm") / 1e6
    return (model_flops / (lstm_s + rest_s)) / matmul_flops_s


def lstm_flops(config: ModelConfig, frames: int) -> float:
    """FLOPs of the LSTM layers alone (input and recurrent gate matmuls) for one clip."""
    widths = (config.num_features, *config.hidden_sizes)
    return sum(2.0 * 4 * h * (widths[i] + h) * frames for i, h in enumerate(config.hidden_sizes))


def profile_parts(model: bytes, threads: int, x: Any, repeats: int) -> dict[str, float]:
    """Node kernel time per part (microseconds per run), mean of ``repeats`` profiled runs on ``x``.

    One warm-up run comes first; its events (everything up to the end of the first ``model_run``) are
    left out, so allocations and kernel selection do not count.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        for _ in range(1 + repeats):
            session.run(["emotion"], {"features": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) != 1 + repeats:
        raise RuntimeError(f"expected {1 + repeats} model_run events in the profile, found {len(runs)}")
    warm_end = runs[0]["ts"] + runs[0]["dur"]
    timed = [e for e in events if e.get("ts", 0) > warm_end]
    return {k: v / repeats for k, v in node_parts(timed).items()}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time every batch size at ``args.threads`` threads; return the rows as a dict."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(REPO))
    from app.core.contract import NUM_COMPARE_FEATURES
    from model_export.export import ExportModule, export_checkpoint, sample_raw_features
    from model_export.testing import write_checkpoint

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    f = NUM_COMPARE_FEATURES
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, onnx_path = Path(tmp) / "m.pt", Path(tmp) / "m.onnx"
        # The full preset with seeded random weights: speed does not depend on what was learnt.
        model, contract = write_checkpoint(ckpt, preset=args.preset, overrides={})
        model_cfg = model.config
        export_checkpoint(ckpt, onnx_path, model_name=args.preset, model_version="bench")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        model_bytes = onnx_path.read_bytes()
    shipped = None
    if args.shipped.is_file():
        shipped = ort.InferenceSession(str(args.shipped), options, providers=["CPUExecutionProvider"])
    module = ExportModule(model, contract).eval()
    hidden4 = 4 * model_cfg.hidden_sizes[0]
    rows = []
    for batch in args.batches:
        x = sample_raw_features(contract, batch, args.frames, rng)
        xt = torch.from_numpy(x)

        def run_ort(sess: Any = session, inp: Any = x) -> object:
            return sess.run(["emotion"], {"features": inp})

        def run_torch(inp: Any = xt) -> object:
            with torch.inference_mode():
                return module(inp)

        a = rng.standard_normal((batch * args.frames, f)).astype(np.float32)
        w = rng.standard_normal((f, hidden4)).astype(np.float32)
        out = np.empty((a.shape[0], hidden4), dtype=np.float32)

        def run_matmul(a: Any = a, w: Any = w, out: Any = out) -> object:
            return np.matmul(a, w, out=out)

        t_ort = median_seconds(run_ort, args.repeats, args.warmup)
        t_torch = median_seconds(run_torch, args.repeats, args.warmup)
        t_mm = median_seconds(run_matmul, args.repeats, args.warmup)
        t_shipped = median_seconds(lambda: run_ort(shipped), args.repeats, args.warmup) if shipped else None
        flops = model_flops(model_cfg, args.frames) * batch
        mm_flops = 2.0 * a.shape[0] * f * hidden4
        profile: dict[str, Any] | None = None
        if args.profile:
            parts = profile_parts(model_bytes, args.threads, x, args.repeats)
            total = sum(parts.values())
            gates = lstm_flops(model_cfg, args.frames) * batch
            profile = {
                "share": {k: v / total for k, v in parts.items()},
                "ms_per_batch": {k: v / 1e3 for k, v in parts.items()},
                "lstm_vs_matmul": (gates / (parts["lstm"] / 1e6)) / (mm_flops / t_mm),
                "ceiling_vs_matmul": ceiling_vs_matmul(parts, gates, flops, mm_flops / t_mm),
            }
        rows.append(
            {
                "threads": args.threads,
                "batch": batch,
                "ort_ms_per_clip": 1e3 * t_ort / batch,
                "torch_ms_per_clip": 1e3 * t_torch / batch,
                "ort_vs_torch": t_torch / t_ort,
                "ort_gflops": flops / t_ort / 1e9,
                "matmul_gflops": mm_flops / t_mm / 1e9,
                "ort_vs_matmul": (flops / t_ort) / (mm_flops / t_mm),
                "shipped_ms_per_clip": None if t_shipped is None else 1e3 * t_shipped / batch,
                "model_gflop_per_clip": model_flops(model_cfg, args.frames) / 1e9,
                "profile": profile,
            }
        )
    return {"rows": rows, "load": os.getloadavg()[0]}


def main() -> int:
    """Run one worker per thread count and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--preset", default="LSTM_AT_400")
    p.add_argument("--frames", type=int, default=61, help="frames per clip (61 = a 30.5 s excerpt)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--shipped", type=Path, default=REPO / "models" / "default.onnx")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also split ORT's node time into the graph's parts (and its ceiling)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        (args.threads,) = args.threads
        print(json.dumps(worker(args)))
        return 0
    rows: list[dict[str, Any]] = []
    loads = []
    for n in args.threads:
        env = dict(os.environ, **{v: str(n) for v in _THREAD_VARS})
        cmd = [sys.executable, __file__, "--worker", "--threads", str(n), "--preset", args.preset]
        cmd += ["--frames", str(args.frames), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        cmd += ["--shipped", str(args.shipped), "--batches", *map(str, args.batches)]
        cmd += ["--profile"] if args.profile else []
        result = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        out = json.loads(result.stdout.strip().splitlines()[-1])
        rows += out["rows"]
        loads.append(out["load"])
    gflop = rows[0]["model_gflop_per_clip"]
    print(f"{args.preset}, {args.frames}-frame clips ({gflop:.3f} GFLOP each), median of {args.repeats}")
    print(f"load average during the workers: {', '.join(f'{v:.2f}' for v in loads)}")
    header = "| threads | batch | ORT ms/clip | eager ms/clip | ORT / eager | ORT GFLOP/s | matmul GFLOP/s "
    header += "| ORT / matmul | shipped ORT ms/clip |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shipped = "–" if r["shipped_ms_per_clip"] is None else f"{r['shipped_ms_per_clip']:.2f}"
        print(
            f"| {r['threads']} | {r['batch']} | {r['ort_ms_per_clip']:.2f} | {r['torch_ms_per_clip']:.2f} "
            f"| {r['ort_vs_torch']:.2f}× | {r['ort_gflops']:.1f} | {r['matmul_gflops']:.1f} "
            f"| {100 * r['ort_vs_matmul']:.0f} % | {shipped} |"
        )
    if args.profile:
        print()
        print("ONNX Runtime's node profile of the same graph and inputs (kernel time, mean of the repeats):")
        print("| threads | batch | LSTM | normaliser | attention | smoothing | other | LSTM node / matmul "
              "| ceiling ORT / matmul |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            prof = r["profile"]
            share = " | ".join(
                f"{100 * prof['share'][k]:.0f} % ({prof['ms_per_batch'][k]:.1f} ms)"
                for k in ("lstm", "normaliser", "attention", "smoothing", "other")
            )
            print(
                f"| {r['threads']} | {r['batch']} | {share} | {100 * prof['lstm_vs_matmul']:.0f} % "
                f"| {100 * prof['ceiling_vs_matmul']:.0f} % |"
            )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "loads": loads}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
