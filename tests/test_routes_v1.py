"""Tests for the /v1 routes: audio and features in, frames out, on a real server with real components."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.core.audio import decode
from app.core.features import FeatureExtractor
from app.core.predictor import DEFAULT_SLICE_FRAMES, Predictor
from model_export.testing import encode, synth_music
from tests.conftest import serving

SR = 16_000
F = 6373


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model) as base:
        yield base


@pytest.fixture(scope="module")
def predictor(served_model: Path) -> Predictor:
    return Predictor.load(served_model, providers="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    return synth_music(6.3, 22_050, seed=3)


def frames_of(body: dict[str, Any]) -> np.ndarray:
    return np.array([[f["arousal"], f["valence"]] for f in body["frames"]])


def expected(
    data: bytes, predictor: Predictor, fx: FeatureExtractor, **range_s: Any
) -> tuple[np.ndarray, float]:
    feats = fx.extract(decode(data, SR, **range_s))
    return predictor.predict(feats.values), feats.gain_db


def check_summary(body: dict[str, Any]) -> None:
    y = frames_of(body)
    summary = body["summary"]
    assert summary["mean"]["arousal"] == pytest.approx(y[:, 0].mean(), abs=1e-6)
    assert summary["mean"]["valence"] == pytest.approx(y[:, 1].mean(), abs=1e-6)
    assert summary["std"]["arousal"] == pytest.approx(y[:, 0].std(), abs=1e-6)
    assert summary["std"]["valence"] == pytest.approx(y[:, 1].std(), abs=1e-6)
    quadrant = {(True, True): "Q1", (True, False): "Q2", (False, False): "Q3", (False, True): "Q4"}
    assert summary["quadrant"] == quadrant[(y[:, 0].mean() >= 0, y[:, 1].mean() >= 0)]


def test_predict_upload_gives_every_frame_as_the_library_computes_it(
    url: str, song: np.ndarray, predictor: Predictor, extractor16k: FeatureExtractor
) -> None:
    data = encode(song, 22_050)
    r = httpx.post(f"{url}/v1/predict", files={"file": ("song.wav", data, "audio/wav")}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny", "version": "0.0.1"}
    assert (body["sample_rate"], body["hop_s"], body["window_s"]) == (SR, 0.5, 0.5)
    assert body["num_frames"] == len(body["frames"]) == 12  # floor(6.3 / 0.5)
    assert [f["index"] for f in body["frames"]] == list(range(12))
    assert [f["start_s"] for f in body["frames"]] == [0.5 * k for k in range(12)]
    assert [f["end_s"] for f in body["frames"]] == [0.5 * k + 0.5 for k in range(12)]
    want, gain = expected(data, predictor, extractor16k)
    assert np.max(np.abs(frames_of(body) - want)) <= 1e-5
    assert body["input_gain_db"] == pytest.approx(gain, abs=1e-9)
    assert body["input_gain_db"] != 0  # the synthetic song is not at -23 dBFS
    assert (body["offset_s"], body["analysed_s"]) == (0.0, pytest.approx(6.3, abs=1e-3))
    check_summary(body)


def test_predict_time_range_decodes_only_that_range(
    url: str, song: np.ndarray, predictor: Predictor, extractor16k: FeatureExtractor
) -> None:
    data = encode(song, 22_050, fmt="FLAC")
    r = httpx.post(
        f"{url}/v1/predict",
        params={"offset_s": 2.0, "duration_s": 3.2},
        content=data,
        headers={"content-type": "audio/flac"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_frames"] == 6
    assert body["frames"][0]["start_s"] == 2.0  # frame times are times in the file
    assert body["frames"][-1]["end_s"] == 5.0
    assert body["offset_s"] == 2.0
    want, gain = expected(data, predictor, extractor16k, offset_s=2.0, duration_s=3.2)
    assert np.max(np.abs(frames_of(body) - want)) <= 1e-5
    assert body["input_gain_db"] == pytest.approx(gain, abs=1e-9)


def test_a_clip_longer_than_the_slice_length_is_served_through_the_step_graph(
    served_model: Path, predictor: Predictor
) -> None:
    x = (np.random.default_rng(4).standard_normal((37, F)) * 100).astype(np.float32)
    whole = Predictor.load(served_model, providers="cpu", intra_op_threads=1, slice_frames=0).predict(x)
    with serving(served_model, infer_slice_frames=8) as base:
        card = httpx.get(f"{base}/v1/models/default").json()
        assert card["step_model"]["slices"] is True
        assert card["step_model"]["slice_frames"] == 8
        r = httpx.post(f"{base}/v1/predict/features", json={"features": x.tolist()}, timeout=60)
    assert r.status_code == 200, r.text
    got = frames_of(r.json())
    np.testing.assert_allclose(got, whole, atol=1e-4, rtol=0)
    # Served through slices: equal to the step graph run in slices of 8.
    assert predictor.step is not None
    state, parts = predictor.step.initial_state(), []
    for start in range(0, len(x), 8):
        y, state = predictor.step.run(x[start : start + 8], state)
        parts.append(y)
    np.testing.assert_allclose(got, np.concatenate(parts), atol=1e-6, rtol=0)


def test_features_json_npy_and_batch_agree_with_the_model(url: str, predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((7, F)) * 100).astype(np.float32)
    b = (rng.standard_normal((3, F)) * 100).astype(np.float32)
    single = httpx.post(f"{url}/v1/predict/features", json={"features": a.tolist()}, timeout=60)
    assert single.status_code == 200, single.text
    assert single.json()["num_frames"] == 7
    assert "input_gain_db" not in single.json()
    np.testing.assert_allclose(frames_of(single.json()), predictor.predict(a), atol=1e-5, rtol=0)
    check_summary(single.json())

    buf = io.BytesIO()
    np.save(buf, a)
    npy = httpx.post(
        f"{url}/v1/predict/features",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
        timeout=60,
    )
    assert npy.status_code == 200, npy.text
    assert npy.json() == single.json()

    batch = httpx.post(
        f"{url}/v1/predict/features",
        json={"items": [{"id": "first", "features": a.tolist()}, {"id": 2, "features": b.tolist()}]},
        timeout=60,
    )
    assert batch.status_code == 200, batch.text
    items = batch.json()["items"]
    assert [(i["id"], i["num_frames"]) for i in items] == [("first", 7), (2, 3)]
    np.testing.assert_allclose(frames_of(items[0]), predictor.predict(a), atol=1e-5, rtol=0)
    np.testing.assert_allclose(frames_of(items[1]), predictor.predict(b), atol=1e-5, rtol=0)


def test_model_card_has_contract_facts_and_scalar_metadata(url: str) -> None:
    r = httpx.get(f"{url}/v1/models/default")
    assert r.status_code == 200
    card = r.json()
    assert (card["name"], card["version"], card["provider"]) == ("tiny", "0.0.1", "CPUExecutionProvider")
    assert card["ready"] is True
    assert card["num_features"] == F
    assert card["outputs"] == ["arousal", "valence"]
    assert card["features"]["sample_rate"] == SR
    meta = card["metadata"]
    assert meta["mer.model_name"] == "tiny"
    assert meta["mer.dataset"] == "synthetic"
    assert set(meta["mer.versions"]) >= {"onnxruntime", "opensmile"}  # JSON values come decoded
    assert meta["mer.features"]["level_policy"] == "gated-rms"
    assert "mer.norm_mean" not in meta
    assert "mer.norm_std" not in meta
    # The step graph live streams run on: its file, parity and state names.
    assert card["step_model"]["file"] == "tiny.step.onnx"
    assert card["step_model"]["parity"] <= 1e-4
    assert {"y_prev", "frames"} <= set(card["step_model"]["state"])
    assert card["step_model"]["slices"] is True
    assert card["step_model"]["slice_frames"] == DEFAULT_SLICE_FRAMES
    assert card["step_model_problem"] is None


@pytest.mark.slow
def test_a_ten_minute_song_succeeds_within_the_limits(served_model: Path) -> None:
    data = encode(synth_music(600.0, 8_000, seed=9), 8_000, fmt="FLAC")
    with serving(served_model, max_duration_s=900) as base:
        r = httpx.post(f"{base}/v1/predict", files={"file": ("long.flac", data, "audio/flac")}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_frames"] == 1200
    assert body["frames"][-1]["end_s"] == 600.0
    assert np.all(np.abs(frames_of(body)) <= 1)
