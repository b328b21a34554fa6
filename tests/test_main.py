from __future__ import annotations

from pathlib import Path

import httpx

from app.main import create_app
from app.settings import Settings
from tests.conftest import running_server


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


def test_settings_come_from_prefixed_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MER_MODEL_PATH", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("MER_MAX_DURATION_S", "12.5")
    s = Settings()
    assert s.model_path == tmp_path / "m.onnx"
    assert s.max_duration_s == 12.5
