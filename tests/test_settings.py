from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_service_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MER_MODEL_PATH", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("MER_MAX_DURATION_S", "12.5")
    monkeypatch.setenv("MER_POOL_WORKERS", "3")
    monkeypatch.setenv("MER_MAX_BATCH", "8")
    monkeypatch.setenv("MER_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("MER_MAX_QUEUE", "10")
    monkeypatch.setenv("MER_REQUEST_TIMEOUT_S", "30")
    monkeypatch.setenv("MER_API_KEY", "k3y")
    monkeypatch.setenv("MER_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MER_LOG_JSON", "true")
    s = Settings()
    assert s.model_path == tmp_path / "m.onnx"
    assert s.max_duration_s == 12.5
    assert (s.pool_size, s.max_batch, s.max_wait_ms, s.max_queue) == (3, 8, 2.5, 10)
    assert s.request_timeout_s == 30
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "k3y"
    assert "k3y" not in repr(s)  # the key never lands in a log line
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.log_json is True
    monkeypatch.setenv("MER_CORS_ORIGINS", '["https://c.example"]')
    assert Settings().cors_origins == ["https://c.example"]


def test_defaults_are_safe() -> None:
    from app.core.predictor import DEFAULT_SLICE_FRAMES

    s = Settings()
    assert s.infer_slice_frames == DEFAULT_SLICE_FRAMES  # the service and the library slice alike
    assert s.api_key is None
    assert s.cors_origins == []
    assert s.pool_size >= 1  # one worker per core the process may use


@pytest.mark.parametrize(
    "bad",
    [
        {"max_batch": 0},
        {"max_queue": 0},
        {"max_wait_ms": -1},
        {"request_timeout_s": 0},
        {"pool_workers": -1},
        {"body_read_timeout_s": 0},
        {"max_decoded_samples": 0},
        {"infer_slice_frames": -1},
        {"max_upload_bytes": 10_000, "max_inflight_body_bytes": 9_999},
    ],
)
def test_out_of_range_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate(bad)
