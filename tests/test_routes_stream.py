"""/v1/stream over a real uvicorn on loopback, with a real WebSocket client (websockets)."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from model_export.testing import export_tiny_model, synth_music
from tests.conftest import serving

HEADER = {"sample_rate": 16_000, "channels": 1, "format": "f32le"}


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a step graph whose contract has no level policy (streams equal offline exactly)."""
    from app.core.contract import FeatureConfig

    return export_tiny_model(
        tmp_path_factory.mktemp("plain"),
        features=FeatureConfig(sample_rate=16_000, level_policy="none"),
        step=True,
        smoothing_alpha=0.8,
    )


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model, stream_idle_timeout_s=1.0, stream_max_duration_s=20.0) as base:
        yield base


def _ws(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/stream"


def _closed(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes; return its close code and reason and the messages before."""
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or "", messages


def _stream_all(base: str, pcm: bytes, header: dict[str, Any], piece: int) -> list[dict[str, Any]]:
    with connect(_ws(base)) as ws:
        ws.send(json.dumps(header))
        ready = json.loads(ws.recv(timeout=10))
        assert ready["type"] == "ready"
        assert ready["hop_s"] == 0.5
        for i in range(0, len(pcm), piece):
            ws.send(pcm[i : i + piece])
        ws.send(json.dumps({"type": "end"}))
        code, _, messages = _closed(ws, timeout=30)
    assert code == 1000
    return messages


def _wav(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_a_song_streamed_faster_than_real_time_gets_every_frame_equal_to_the_offline_prediction(
    plain_model: Path,
) -> None:
    x = synth_music(40.0, 16_000, seed=11)
    with serving(plain_model) as base:
        t0 = time.monotonic()
        messages = _stream_all(base, x.astype("<f4").tobytes(), HEADER, piece=3_217 * 4)
        wall = time.monotonic() - t0
        offline = httpx.post(
            base + "/v1/predict", content=_wav(x, 16_000), headers={"Content-Type": "audio/wav"}, timeout=60
        ).json()
    frames = [m for m in messages if m["type"] == "frame"]
    assert wall < 40.0  # faster than real time
    assert [f["index"] for f in frames] == list(range(80))
    assert frames[3]["start_s"] == 1.5
    assert frames[3]["end_s"] == 2.0
    got = np.array([[f["arousal"], f["valence"]] for f in frames])
    want = np.array([[f["arousal"], f["valence"]] for f in offline["frames"]])
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-4  # the step graph's parity; features are bit-identical
    summary = messages[-1]
    assert summary["type"] == "summary"
    assert summary["frames"] == 80
    assert summary["duration_s"] == 40.0
    assert summary["summary"]["mean"]["arousal"] == pytest.approx(
        offline["summary"]["mean"]["arousal"], abs=1e-4
    )


def test_with_the_running_gain_frames_stay_close_to_the_offline_prediction(url: str) -> None:
    x = synth_music(12.0, 16_000, seed=12)
    pcm = (np.clip(x, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    messages = _stream_all(url, pcm, {"sample_rate": 16_000, "format": "s16le"}, piece=999)
    frames = [m for m in messages if m["type"] == "frame"]
    offline = httpx.post(
        url + "/v1/predict", content=_wav(x, 16_000), headers={"Content-Type": "audio/wav"}
    ).json()
    got = np.array([[f["arousal"], f["valence"]] for f in frames])
    want = np.array([[f["arousal"], f["valence"]] for f in offline["frames"]])
    assert got.shape == want.shape == (24, 2)
    assert np.max(np.abs(got - want)) < 0.2  # a tiny untrained model; the real one: docs/performance.md


@pytest.mark.parametrize(
    ("first", "code", "reason"),
    [
        (b"\x00\x01", 1003, "first message must be the JSON header"),
        ("not json", 1003, "not JSON"),
        (json.dumps({"sample_rate": 16000, "format": "mp3"}), 1003, "format must be one of"),
        (json.dumps({"sample_rate": 1, "format": "s16le"}), 1003, "sample_rate"),
        (json.dumps([1, 2]), 1003, "JSON object"),
        ("x" * 5000, 1009, "longer than 4096"),
    ],
)
def test_bad_headers_are_closed_with_a_clear_code_and_reason(
    url: str, first: Any, code: int, reason: str
) -> None:
    with connect(_ws(url)) as ws:
        ws.send(first)
        got_code, got_reason, _ = _closed(ws)
    assert got_code == code
    assert reason in got_reason


def test_oversized_messages_nan_samples_and_stray_text_are_closed(served_model: Path) -> None:
    with serving(served_model, stream_max_message_bytes=1000) as base:
        with connect(_ws(base)) as ws:
            ws.send(json.dumps(HEADER))
            ws.recv(timeout=10)
            ws.send(b"\x00" * 1001)
            code, reason, _ = _closed(ws)
        assert code == 1009
        assert "larger than 1000 bytes" in reason
        with connect(_ws(base)) as ws:
            ws.send(json.dumps(HEADER))
            ws.recv(timeout=10)
            ws.send(np.array([0.1, np.nan], dtype="<f4").tobytes())
            code, reason, _ = _closed(ws)
        assert code == 1007
        assert "NaN" in reason
        with connect(_ws(base)) as ws:
            ws.send(json.dumps(HEADER))
            ws.recv(timeout=10)
            ws.send("hello")
            code, reason, _ = _closed(ws)
        assert code == 1003
        assert '"end"' in reason


def test_idle_and_over_long_streams_are_closed(url: str) -> None:
    with connect(_ws(url)) as ws:  # idle before the header
        code, reason, _ = _closed(ws)
    assert code == 1008
    assert "idle" in reason
    with connect(_ws(url)) as ws:  # idle after some audio
        ws.send(json.dumps(HEADER))
        ws.recv(timeout=10)
        ws.send(np.zeros(16_000, dtype="<f4").tobytes())
        code, reason, _messages = _closed(ws)
    assert code == 1008
    assert "idle" in reason
    with connect(_ws(url)) as ws:  # 20 s limit
        ws.send(json.dumps(HEADER))
        ws.recv(timeout=10)
        second = synth_music(1.0, 16_000, seed=2).astype("<f4").tobytes()
        with contextlib.suppress(ConnectionClosed):  # the server may close while we still send
            for _ in range(25):
                ws.send(second)
                time.sleep(0.01)
        _closed(ws)
        assert ws.close_code == 1008
        assert "limit of 20 s" in (ws.close_reason or "")


def test_the_api_key_is_required_from_the_header_or_the_authorization_header(served_model: Path) -> None:
    with serving(served_model, api_key="s3cret") as base:
        with connect(_ws(base)) as ws:
            ws.send(json.dumps(HEADER))
            code, reason, _ = _closed(ws)
        assert code == 1008
        assert "unauthorized" in reason
        with connect(_ws(base)) as ws:
            ws.send(json.dumps({**HEADER, "api_key": "wrong"}))
            code, _, _ = _closed(ws)
        assert code == 1008
        with connect(_ws(base)) as ws:
            ws.send(json.dumps({**HEADER, "api_key": "s3cret"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        with connect(_ws(base), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send(json.dumps(HEADER))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"


def test_streams_beyond_the_limit_are_told_to_come_back_later_and_metrics_count_them(
    served_model: Path,
) -> None:
    with serving(served_model, stream_max_concurrent=1) as base:
        with connect(_ws(base)) as first:
            first.send(json.dumps(HEADER))
            assert json.loads(first.recv(timeout=10))["type"] == "ready"
            with connect(_ws(base)) as second:
                second.send(json.dumps(HEADER))
                code, reason, _ = _closed(second)
            assert code == 1013
            assert "streams are running" in reason
            first.send(synth_music(2.0, 16_000, seed=3).astype("<f4").tobytes())
            first.send(json.dumps({"type": "end"}))
            code, _, messages = _closed(first)
        assert code == 1000
        assert sum(m["type"] == "frame" for m in messages) == 4
        metrics = httpx.get(base + "/metrics").text
    assert "mer_streams_open 0.0" in metrics
    assert "mer_stream_frames_total 4.0" in metrics
    assert 'mer_stream_closes_total{code="1013"} 1.0' in metrics
    assert "mer_stream_frame_latency_seconds_count 4.0" in metrics


def test_a_model_without_a_step_graph_closes_streams_with_1011(tmp_path: Path) -> None:
    with serving(export_tiny_model(tmp_path)) as base, connect(_ws(base)) as ws:
        ws.send(json.dumps(HEADER))
        code, reason, _ = _closed(ws)
    assert code == 1011
    assert "no step graph" in reason


def test_a_missing_step_file_closes_streams_with_1011_and_says_which_file(tmp_path: Path) -> None:
    seq = export_tiny_model(tmp_path, step=True)
    seq.with_name(seq.stem + ".step.onnx").unlink()
    with serving(seq) as base:
        with connect(_ws(base)) as ws:
            ws.send(json.dumps(HEADER))
            code, reason, _ = _closed(ws)
        card = httpx.get(f"{base}/v1/models/default").json()
    assert code == 1011
    assert "not beside" in reason
    assert card["step_model"] is None
    assert "tiny.step.onnx" in card["step_model_problem"]
