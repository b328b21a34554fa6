"""Tests for the /v2 routes: health and the Open Inference Protocol, on a real server and model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.core.predictor import Predictor
from tests.conftest import serving

F = 6373


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model) as base:
        yield base


def tensor_request(x: np.ndarray, **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
        ],
        **extra,
    }


def test_health_and_server_metadata(url: str) -> None:
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2").json()
    assert meta["name"] == "music-emotion-service"
    assert meta["extensions"] == []
    assert meta["version"]


def test_model_metadata_and_readiness(url: str) -> None:
    meta = httpx.get(f"{url}/v2/models/tiny")
    assert meta.status_code == 200
    assert meta.json() == {
        "name": "tiny",
        "versions": ["0.0.1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, -1, F]}],
        "outputs": [{"name": "emotion", "datatype": "FP32", "shape": [-1, -1, 2]}],
    }
    assert httpx.get(f"{url}/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}


def test_infer_runs_a_batch_and_echoes_the_id(url: str, served_model: Path) -> None:
    x = (np.random.default_rng(1).standard_normal((2, 4, F)) * 50).astype(np.float32)
    r = httpx.post(
        f"{url}/v2/models/tiny/infer",
        json=tensor_request(x, id="req-7", outputs=[{"name": "emotion"}]),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("tiny", "0.0.1", "req-7")
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("emotion", "FP32", [2, 4, 2])
    predictor = Predictor.load(served_model, providers="cpu", intra_op_threads=1, warmup=False)
    want = np.stack(predictor.predict_batch([x[0], x[1]]))
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 4, 2), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", ["/v2/models/other", "/v2/models/other/ready"])
def test_unknown_model_name_is_404_in_the_error_shape(url: str, path: str) -> None:
    r = httpx.get(f"{url}{path}")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert "'other'" in r.json()["error"]["message"]


def test_infer_on_an_unknown_model_is_404(url: str) -> None:
    r = httpx.post(f"{url}/v2/models/other/infer", json=tensor_request(np.zeros((1, 1, F), np.float32)))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"shape": [1, 2, 10], "data": [0.0] * 20}, "shape [B, T, 6373]"),
        ({"shape": [2, F], "data": [0.0] * 2 * F}, "got shape [2, 6373]"),
        ({"shape": [0, 1, F], "data": []}, "B, T >= 1"),
        ({"name": "x"}, "got input 'x'"),
        ({"datatype": "INT8"}, "FP32"),
        ({"data": [0.0] * (F - 1)}, "holds 6372 values"),
        ({"data": [float("nan")] + [0.0] * (F - 1)}, "NaN"),
    ],
)
def test_bad_tensors_are_422_with_the_expected_shape(url: str, change: dict[str, object], match: str) -> None:
    tensor: dict[str, object] = {
        "name": "features",
        "shape": [1, 1, F],
        "datatype": "FP32",
        "data": [0.0] * F,
    }
    tensor.update(change)
    body = json.dumps({"inputs": [tensor]})  # Python's encoder writes NaN, as many clients do
    r = httpx.post(f"{url}/v2/models/tiny/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in {"invalid_request", "invalid_features"}
    assert match in r.json()["error"]["message"]


def test_requesting_an_output_the_model_lacks_is_422(url: str) -> None:
    x = np.zeros((1, 1, F), np.float32)
    r = httpx.post(f"{url}/v2/models/tiny/infer", json=tensor_request(x, outputs=[{"name": "dominance"}]))
    assert r.status_code == 422
    assert "'emotion'" in r.json()["error"]["message"]


def test_model_routes_without_a_model_are_503_not_ready(tmp_path: Path) -> None:
    with serving(tmp_path / "missing.onnx") as base:
        for path in ("/v2/models/tiny", "/v2/models/tiny/ready", "/v1/models/default"):
            r = httpx.get(f"{base}{path}")
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "model_not_ready"
        assert httpx.get(f"{base}/v2").status_code == 200  # server metadata needs no model
