"""Helpers for tests and benchmarks: synthesised music, tiny contracts, checkpoints and ONNX models.

Importable by anyone's tests (``tests/``, ``bench/``): nothing here reads research data, and torch
is imported only by the functions that build models. The audio is synthesised, so every check runs on
a fresh machine.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from app.core.contract import NUM_COMPARE_FEATURES, OUTPUTS, FeatureConfig, ModelContract
from app.core.types import FloatArray

__all__ = [
    "TINY_OVERRIDES",
    "encode",
    "export_tiny_model",
    "local_ray_cluster",
    "make_contract",
    "synth_music",
    "write_checkpoint",
]

#: A tiny model with the real input width: hidden 4 and a 4-frame attention window export in about a
#: second, and T = 61 / 300 still run far past the window.
TINY_OVERRIDES: dict[str, Any] = {"hidden_sizes": [4], "attention_window": 4}


def synth_music(duration_s: float, sample_rate: int, seed: int = 0) -> FloatArray:
    """Harmonic notes with onsets, decays and loudness changes, plus a little noise (mono float32).

    Example:
        >>> synth_music(2.0, 16_000).shape
        (32000,)
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    note_s = 0.25
    for start in np.arange(0.0, duration_s, note_s):
        i0 = int(start * sample_rate)
        i1 = min(n, int((start + note_s * 1.5) * sample_rate))
        if i0 >= n:
            break
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        tt = t[i0:i1] - start
        env = np.exp(-tt * 6.0) * (1 - np.exp(-tt * 400.0))
        for h in range(1, 6):
            out[i0:i1] += env * np.sin(2 * np.pi * f0 * h * tt) / h
    loudness = 0.15 + 0.1 * np.sin(2 * np.pi * t / 7.0)  # slow crescendi / decrescendi
    out = out * loudness + 0.003 * rng.standard_normal(n)
    return np.clip(out, -1, 1).astype(np.float32)


def encode(signal: npt.ArrayLike, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """Encode samples (frames x channels, or mono) into an in-memory audio file."""
    buf = io.BytesIO()
    sf.write(buf, signal, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_contract(outputs: tuple[str, ...] = OUTPUTS, seed: int = 0) -> ModelContract:
    """A valid contract with random statistics and a placeholder feature-name hash.

    The service refuses it (features it cannot compute) unless the hash and openSMILE version are
    replaced by this build's, as :func:`export_tiny_model` does.
    """
    rng = np.random.default_rng(seed)
    f = NUM_COMPARE_FEATURES
    return ModelContract(
        features=FeatureConfig(sample_rate=16_000),
        num_features=f,
        feature_names_sha256="ab" * 32,
        opensmile_version="2.6.0",
        # Statistics of signed_log1p-compressed features: means of a few units, varied spreads.
        norm_mean=(rng.standard_normal(f) * 3).astype(np.float32),
        norm_std=(rng.random(f) * 2 + 0.1).astype(np.float32),
        outputs=outputs,
    )


def write_checkpoint(
    path: Path,
    *,
    preset: str = "LSTM_AT_400",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    contract: ModelContract | None = None,
    replace: dict[str, Any] | None = None,
    input_rank: int = 0,
) -> tuple[Any, ModelContract]:
    """Write a checkpoint as ``python -m model_export train`` does, with untrained weights.

    Args:
        path: The ``.pt`` file.
        preset: Model preset.
        overrides: ``ModelConfig`` fields (default :data:`TINY_OVERRIDES`).
        seed: Weight seed.
        contract: The contract (default :func:`make_contract`).
        replace: Checkpoint entries to overwrite (to write broken checkpoints in tests).
        input_rank: If > 0, as if trained with this input rank: the input weights are projected onto
            that many random orthonormal directions (rank ``input_rank``) and the config says so.

    Returns:
        The model (an ``EmotionRNN`` in eval mode) and its contract.
    """
    import torch

    from model_export.model import build_model
    from model_export.train import TrainConfig

    contract = contract or make_contract()
    cfg = TrainConfig(
        preset=preset,
        model_overrides=dict(TINY_OVERRIDES if overrides is None else overrides),
        seed=seed,
        input_rank=input_rank,
    )
    model_cfg = cfg.model_config(NUM_COMPARE_FEATURES)
    model = build_model(model_cfg, seed=seed).eval()
    if input_rank:
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(NUM_COMPARE_FEATURES, input_rank, generator=gen))
        state = model.state_dict()
        state["encoder.0.weight_ih_l0"] = state["encoder.0.weight_ih_l0"] @ basis @ basis.T
        model.load_state_dict(state)
    ckpt: dict[str, Any] = {
        "model_config": model_cfg.to_dict(),
        "train_config": cfg.to_dict(),
        "state_dict": model.state_dict(),
        "contract": contract.to_metadata(),
        "dataset": "synthetic",
        "history": [
            {"epoch": 1, "train_mse": 0.2, "val_mse": 0.15, "s": 1.0},
            {"epoch": 2, "train_mse": 0.1, "val_mse": 0.12, "s": 1.0},
        ],
        "best_epoch": 2,
        "clips": 40,
    }
    ckpt.update(replace or {})
    torch.save(ckpt, path)
    return model, contract


def export_tiny_model(
    directory: Path,
    *,
    real_names: bool = True,
    name: str = "tiny",
    version: str = "0.0.1",
    features: FeatureConfig | None = None,
    step: bool = False,
    smoothing_alpha: float | None = None,
) -> Path:
    """Export a tiny untrained model (hidden 4, the real 6373-wide input) to ``directory/<name>.onnx``.

    With ``real_names`` its contract names this build's feature-name hash and openSMILE version, so
    the service accepts it; without, the service refuses it (features it cannot compute). ``features``
    replaces the contract's feature configuration (e.g. a chunked one). ``step`` also writes the
    step graph beside it (streams, slices of long clips); ``smoothing_alpha`` adds output smoothing. Runs
    torch on one thread: with more, each time step's small ops wait for descheduled threads on a busy box.
    """
    import torch

    from app.core.features import FeatureExtractor, opensmile_version
    from model_export.export import export_checkpoint
    from model_export.smoothing import Smoothing
    from model_export.step import add_step_graph

    contract = make_contract()
    if features is not None:
        contract = dc_replace(contract, features=features)
    if real_names:
        fx = FeatureExtractor(contract.features)
        contract = dc_replace(
            contract, feature_names_sha256=fx.feature_names_sha256, opensmile_version=opensmile_version()
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt = directory / f"{name}.pt"
        write_checkpoint(ckpt, contract=contract)
        path = export_checkpoint(
            ckpt,
            directory / f"{name}.onnx",
            model_name=name,
            model_version=version,
            smoothing=None if smoothing_alpha is None else Smoothing(alpha=smoothing_alpha, taps=8),
        )
        if step:
            add_step_graph(path)
        return path
    finally:
        torch.set_num_threads(previous)


_RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _ray_alive_nodes(address: str) -> int:
    code = (
        "import ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "print(sum(1 for n in ray.nodes() if n['Alive']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_RAY_ENV, timeout=60
    )
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines else 0


def _stop_ray_node(process: subprocess.Popen[bytes]) -> None:
    """Stop one ``ray start --block`` by its PID: SIGTERM drains the node; its process group goes after."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=45)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # raylet, workers and stores the node left behind
    process.wait(timeout=10)


@contextmanager
def local_ray_cluster(nodes: int = 2, cpus_per_node: int = 1, timeout_s: float = 120.0) -> Iterator[str]:
    """A real Ray cluster on 127.0.0.1: a head and ``nodes - 1`` worker nodes, started with ``ray start``.

    Each node is one ``ray start --block`` process in its own process group, stopped by its PID (never
    ``ray stop``, which would stop every Ray process on the machine). Needs the ``cluster`` extra.

    Yields:
        The cluster's address (``127.0.0.1:<port>``), for ``ray.init`` or ``mer-score --address``.
    """
    ray_cli = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus_per_node}",
        "--object-store-memory=150000000",
    ]
    started: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        for n in range(nodes):
            args = (
                ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
                if n == 0
                else [f"--address={address}"]
            )
            log = Path(temp) / f"node{n}.log"
            with log.open("wb") as out:
                started.append(
                    subprocess.Popen(
                        [ray_cli, "start", *args, *common],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=_RAY_ENV,
                        start_new_session=True,
                    )
                )
            while _ray_alive_nodes(address) < n + 1:
                if started[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray node {n} did not start: {log.read_text()[-2000:]}")
                time.sleep(1)
        yield address
    finally:
        for process in reversed(started):  # workers first, the head last
            _stop_ray_node(process)
        shutil.rmtree(temp, ignore_errors=True)
