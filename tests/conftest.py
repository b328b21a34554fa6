"""Shared fixtures: audio synthesised by the tests, real extractors, a real uvicorn server.

The helpers that build audio and models live in :mod:`model_export.testing` (benchmarks use them too).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from app.core.contract import FeatureConfig
from app.core.features import FeatureExtractor
from app.http.protocols import JsonErrorProtocol
from app.main import create_app
from app.settings import Settings
from model_export.testing import export_tiny_model, synth_music


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


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported ONNX model the service accepts, built once per test session."""
    return export_tiny_model(tmp_path_factory.mktemp("served_model"), step=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_uvicorn(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server, threading.Thread]]:
    """Run ``app`` under a real uvicorn server on a loopback port; yield its URL, server and thread."""
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=JsonErrorProtocol,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
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
