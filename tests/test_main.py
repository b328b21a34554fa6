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


def _exported_model(tmp_path: Path, real_names: bool) -> Path:
    from dataclasses import replace

    from app.features import FeatureExtractor, opensmile_version
    from model_export.export import export_checkpoint
    from tests.test_export import make_contract, write_checkpoint

    contract = make_contract()
    if real_names:
        fx = FeatureExtractor(contract.features)
        contract = replace(
            contract, feature_names_sha256=fx.feature_names_sha256, opensmile_version=opensmile_version()
        )
    ckpt = tmp_path / "m.pt"
    write_checkpoint(ckpt, contract=contract)
    return export_checkpoint(ckpt, tmp_path / "m.onnx", model_name="tiny", model_version="0.0.1")


def test_ready_once_a_valid_model_is_loaded_and_warmed_up(tmp_path: Path) -> None:
    model = _exported_model(tmp_path, real_names=True)
    with running_server(create_app(Settings(model_path=model, intra_op_threads=1))) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_a_model_whose_features_this_build_cannot_compute_keeps_it_unready(tmp_path: Path) -> None:
    model = _exported_model(tmp_path, real_names=False)
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
