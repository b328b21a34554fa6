from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app.main import create_app
from app.settings import Settings
from model_export.testing import export_tiny_model
from tests.conftest import running_server, running_uvicorn


def test_live_without_a_model_and_not_ready(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.onnx"
    with running_server(create_app(Settings(model_path=missing))) as url:
        live = httpx.get(f"{url}/v2/health/live")
        assert live.status_code == 200
        assert live.json() == {"live": True}
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["error"]["code"] == "model_not_ready"
        assert str(missing) in body["error"]["message"]


def test_ready_once_a_valid_model_is_loaded_and_warmed_up(served_model: Path) -> None:
    with running_server(create_app(Settings(model_path=served_model, intra_op_threads=1))) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_a_model_whose_features_this_build_cannot_compute_keeps_it_unready(tmp_path: Path) -> None:
    model = export_tiny_model(tmp_path, real_names=False)
    with running_server(create_app(Settings(model_path=model, intra_op_threads=1))) as url:
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503
        assert "feature names" in ready.json()["error"]["message"]


def test_a_file_that_is_not_a_model_keeps_it_unready(tmp_path: Path) -> None:
    bogus = tmp_path / "m.onnx"
    bogus.write_bytes(b"not an onnx file")
    with running_server(create_app(Settings(model_path=bogus))) as url:
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503
        assert "not usable" in ready.json()["error"]["message"]


def test_shutdown_drains_in_flight_requests(served_model: Path) -> None:
    # The request waits 1.5 s in the batcher for companions; shutdown begins while it waits.
    app = create_app(Settings(model_path=served_model, intra_op_threads=1, max_wait_ms=1500))
    x = np.zeros((3, 6373), np.float32).tolist()
    result: dict[str, httpx.Response] = {}
    with running_uvicorn(app) as (url, server, thread):
        client = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(f"{url}/v1/predict/features", json={"features": x}, timeout=60)
            )
        )
        client.start()
        deadline = time.monotonic() + 30
        while 'mer_queued{queue="batch"} 1.0' not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, "the request never reached the batcher"
            time.sleep(0.02)
        server.should_exit = True
        client.join(timeout=60)
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert result["r"].status_code == 200
    assert result["r"].json()["num_frames"] == 3


def test_cors_is_off_by_default_and_on_for_listed_origins(tmp_path: Path) -> None:
    preflight = {"origin": "https://ui.example", "access-control-request-method": "POST"}
    with running_server(create_app(Settings(model_path=tmp_path / "none.onnx"))) as url:
        r = httpx.options(f"{url}/v1/predict", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    settings = Settings(model_path=tmp_path / "none.onnx", cors_origins=["https://ui.example"])
    with running_server(create_app(settings)) as url:
        r = httpx.options(f"{url}/v1/predict", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        other = httpx.options(f"{url}/v1/predict", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # Error responses carry the header too, so a browser client can read them.
        ready = httpx.get(f"{url}/v2/health/ready", headers={"origin": "https://ui.example"})
        assert ready.status_code == 503
        assert ready.headers["access-control-allow-origin"] == "https://ui.example"
