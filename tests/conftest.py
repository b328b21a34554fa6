"""Shared fixtures: audio synthesised by the tests, real extractors, a real uvicorn server."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI

from app.contract import FeatureConfig
from app.features import FeatureExtractor
from app.main import create_app
from app.settings import Settings


def synth_music(duration_s: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Harmonic notes with onsets, decays and loudness changes, plus a little noise (mono float32)."""
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


def encode(signal: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """Encode samples (frames x channels or mono) into an in-memory file."""
    buf = io.BytesIO()
    sf.write(buf, signal, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="session")
def extractor16k() -> FeatureExtractor:
    return FeatureExtractor(FeatureConfig(sample_rate=16_000))


@pytest.fixture(scope="session")
def music16k() -> np.ndarray:
    return synth_music(45.0, 16_000, seed=1)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded for tiny models.

    With several threads every time step's small op opens a parallel region, and on a shared, busy
    machine each of those waits for a descheduled thread (T=300, B=3 took 10 s instead of 50 ms).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def export_tiny_model(
    directory: Path, *, real_names: bool = True, name: str = "tiny", version: str = "0.0.1"
) -> Path:
    """Export a tiny untrained model (hidden 4, the real 6373-wide input) to ``directory/<name>.onnx``.

    With ``real_names`` its contract names this build's feature-name hash and openSMILE version, so
    the service accepts it; without, the service refuses it (features it cannot compute).
    """
    import torch

    from app.features import FeatureExtractor, opensmile_version
    from model_export.export import export_checkpoint
    from tests.test_export import make_contract, write_checkpoint

    contract = make_contract()
    if real_names:
        fx = FeatureExtractor(contract.features)
        contract = replace(
            contract, feature_names_sha256=fx.feature_names_sha256, opensmile_version=opensmile_version()
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_torch_thread
    try:
        ckpt = directory / f"{name}.pt"
        write_checkpoint(ckpt, contract=contract)
        return export_checkpoint(ckpt, directory / f"{name}.onnx", model_name=name, model_version=version)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported ONNX model the service accepts, built once per test session."""
    return export_tiny_model(tmp_path_factory.mktemp("served_model"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_uvicorn(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server, threading.Thread]]:
    """Run ``app`` under a real uvicorn server on a loopback port; yield its URL, server and thread."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a loopback port; yield its base URL."""
    with running_uvicorn(app) as (url, _, _):
        yield url


@contextmanager
def serving(model: Path, **overrides: Any) -> Iterator[str]:
    """Serve ``model`` with the given settings (one ONNX Runtime thread) on loopback; yield the URL."""
    with running_server(create_app(Settings(model_path=model, intra_op_threads=1, **overrides))) as url:
        yield url
