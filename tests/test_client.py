"""mer_client against the real server on loopback: results, errors, keys, retries, sync and async."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from app.core.audio import decode
from app.core.features import FeatureExtractor
from mer_client import AsyncClient, Client, MERError, MERUnavailableError, RetryPolicy
from model_export.testing import encode, synth_music
from tests.conftest import serving

KEY = "client-test-key"


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client") / "song.wav"
    path.write_bytes(encode(synth_music(3.0, 16_000, seed=4), 16_000))  # 96 kB
    return path


@dataclass(frozen=True)
class RecordingPolicy(RetryPolicy):
    """The default policy, remembering each wait it chose."""

    waits: list[float] = field(default_factory=list)

    def wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        wait = super().wait_s(attempt, retry_after_s)
        self.waits.append(wait)
        return wait


def test_the_client_imports_without_the_servers_dependencies() -> None:
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi', 'starlette', 'onnxruntime', 'opensmile', 'app',\n"
        "                                  'pydantic', 'torch', 'soundfile', 'uvicorn'}:\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mer_client\n"
        "print(mer_client.Client.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Client"


def test_predict_model_ready_and_errors_against_a_live_server(
    served_model: Path, song: Path, extractor16k: FeatureExtractor
) -> None:
    with serving(served_model, api_key=KEY) as url, Client(url, api_key=KEY) as mer:
        assert mer.ready()
        info = mer.model()
        assert (info.name, info.num_features, info.outputs) == ("tiny", 6373, ["arousal", "valence"])
        assert info.sample_rate == 16_000
        assert info.hop_s == 0.5

        whole = mer.predict(song)
        assert len(whole.frames) == 6
        assert whole.model_name == "tiny"
        assert whole.analysed_s == pytest.approx(3.0)
        assert whole.summary.quadrant in {"Q1", "Q2", "Q3", "Q4"}
        part = mer.predict(song.read_bytes(), offset_s=1.0, duration_s=1.0)
        assert [f.start_s for f in part.frames] == [1.0, 1.5]

        features = extractor16k.extract(decode(song, 16_000)).values  # what the server extracts
        from_features = mer.predict_features(features)
        assert from_features.arousal == pytest.approx(whole.arousal, abs=1e-6)
        assert from_features.input_gain_db is None

        with pytest.raises(MERError) as refused:
            mer.predict(b"certainly not audio")
        assert (refused.value.status, refused.value.code) == (415, "unsupported_audio")
        with pytest.raises(MERError) as bad_features:
            mer.predict_features(np.zeros((2, 10), np.float32))
        assert bad_features.value.code == "invalid_features"
        assert "6373" in bad_features.value.message

        with Client(url, api_key="wrong") as intruder:
            with pytest.raises(MERError) as unauthorised:
                intruder.model()
            assert (unauthorised.value.status, unauthorised.value.code) == (401, "unauthorized")


def test_the_async_client_does_the_same(served_model: Path, song: Path) -> None:
    async def run(url: str) -> list[int]:
        async with AsyncClient(url) as mer:
            assert await mer.ready()
            assert (await mer.model()).name == "tiny"
            results = await asyncio.gather(*(mer.predict(song) for _ in range(3)))
            with pytest.raises(MERError, match="unsupported_audio"):
                await mer.predict(b"nope")
            return [len(r.frames) for r in results]

    with serving(served_model) as url:
        assert asyncio.run(run(url)) == [6, 6, 6]


def _hold_body_budget(url: str, size: int, seconds: float) -> threading.Thread:
    """Send a request whose body trickles in for ``seconds``: it holds ``size`` bytes of the budget."""
    target = urlparse(url)

    def trickle() -> None:
        with socket.create_connection((target.hostname, target.port)) as s:
            s.sendall(
                f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                f"Content-Length: {size}\r\n\r\n".encode()
            )
            steps = 10
            for _ in range(steps):
                time.sleep(seconds / steps)
                s.sendall(b"\0" * (size // steps))
            s.recv(4096)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    return thread


def test_a_503_is_retried_after_the_servers_retry_after(served_model: Path, song: Path) -> None:
    policy = RecordingPolicy(retries=3, backoff_s=0.1)
    with serving(served_model, max_upload_bytes=200_000, max_inflight_body_bytes=200_000) as url:
        holder = _hold_body_budget(url, 150_000, seconds=1.5)
        time.sleep(0.3)  # the trickling request has reserved its 150 kB
        with Client(url, retry=policy) as mer:
            result = mer.predict(song)  # 96 kB more does not fit: 503, Retry-After: 2
        holder.join(timeout=10)
    assert len(result.frames) == 6
    assert policy.waits[0] == 2.0  # the server's Retry-After, not the 0.1 s backoff


def test_an_unavailable_server_raises_after_the_retries(tmp_path: Path, song: Path) -> None:
    policy = RecordingPolicy(retries=2, backoff_s=0.05)
    with serving(tmp_path / "no-model.onnx") as url, Client(url, retry=policy) as mer:
        assert not mer.ready()
        with pytest.raises(MERUnavailableError) as unavailable:
            mer.predict(song)
    assert (unavailable.value.status, unavailable.value.code) == (503, "model_not_ready")
    assert len(policy.waits) == 2
    assert all(0.03 < w < 0.15 for w in policy.waits)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", retry=RetryPolicy(retries=1, backoff_s=0.01)) as nobody:
        assert not nobody.ready()
        with pytest.raises(MERUnavailableError) as unreachable:
            nobody.model()
    assert (unreachable.value.status, unreachable.value.code) == (0, "unreachable")


def test_a_response_without_the_error_shape_keeps_its_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="bad gateway"))
    with Client("http://proxy", transport=transport) as mer, pytest.raises(MERError) as failed:
        mer.model()
    assert (failed.value.status, failed.value.code, failed.value.message) == (502, "http_502", "bad gateway")
    body = json.dumps({"error": {"code": "overloaded", "message": "busy"}})
    calls: list[int] = []

    def busy(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, text=body, headers={"Retry-After": "0"})

    policy = RetryPolicy(retries=2)
    with (
        Client("http://proxy", transport=httpx.MockTransport(busy), retry=policy) as mer,
        pytest.raises(MERUnavailableError, match="overloaded"),
    ):
        mer.model()
    assert len(calls) == 3
