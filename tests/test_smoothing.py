from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from app.core.predictor import Predictor
from model_export.export import ExportModule, export_checkpoint, sample_raw_features
from model_export.smoothing import CausalSmoother, Smoothing, smooth_causal
from model_export.testing import write_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_graph_layer_matches_the_reference_and_is_causal() -> None:
    y = np.random.default_rng(0).uniform(-1, 1, (3, 150, 2)).astype(np.float32)
    layer = CausalSmoother(0.9, 60, 2)
    got = layer(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, np.stack([smooth_causal(c, 0.9, 60) for c in y]), atol=1e-6)
    changed = y.copy()
    changed[:, 100:] = 0.0  # the future of frame 99
    np.testing.assert_array_equal(layer(torch.from_numpy(changed)).numpy()[:, :100], got[:, :100])


def test_constant_curves_stay_put_and_alpha_zero_is_the_identity() -> None:
    flat = np.full((40, 2), 0.3, np.float32)
    np.testing.assert_allclose(smooth_causal(flat, 0.9, 60), flat, rtol=1e-6)  # no pull towards 0 at t = 0
    y = np.random.default_rng(1).uniform(-1, 1, (1, 20, 2)).astype(np.float32)
    np.testing.assert_array_equal(CausalSmoother(0.0, 60, 2)(torch.from_numpy(y)).numpy(), y)


def test_smoothing_reduces_frame_to_frame_jumps_by_its_time_constant() -> None:
    noise = np.random.default_rng(2).standard_normal((2000, 1)).astype(np.float32)
    smooth = smooth_causal(noise, 0.9, 60)
    ratio = np.abs(np.diff(smooth[100:, 0])).mean() / np.abs(np.diff(noise[:, 0])).mean()
    # An EMA of white noise: steps (1 - a)(x_t - s_{t-1}) have variance (1 - a)^2 (1 + (1 - a)/(1 + a)),
    # raw steps 2; with a = 0.9 they shrink about 14-fold.
    a = 0.9
    assert ratio == pytest.approx((1 - a) * np.sqrt((1 + (1 - a) / (1 + a)) / 2), rel=0.1)


@pytest.mark.parametrize("bad", [{"alpha": 1.0}, {"alpha": -0.1}, {"alpha": 0.5, "taps": 0}])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="smoothing"):
        Smoothing(**bad)  # type: ignore[arg-type]


def test_an_export_with_smoothing_matches_pytorch_at_every_length_and_says_so(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    model, contract = write_checkpoint(ckpt)
    smoothing = Smoothing(0.9, 60)
    path = export_checkpoint(
        ckpt, tmp_path / "m.onnx", model_name="m", model_version="1", smoothing=smoothing
    )
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["mer.smoothing"]) == {"kind": "causal-exponential", "alpha": 0.9, "taps": 60}
    reference = ExportModule(model, contract, smoothing).eval()
    plain = ExportModule(model, contract).eval()
    predictor = Predictor.load(path, providers="cpu", intra_op_threads=1, warmup=False)
    rng = np.random.default_rng(3)
    for frames in (1, 2, 61, 150, 300):
        x = sample_raw_features(contract, 2, frames, rng)
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
            raw = plain(torch.from_numpy(x)).numpy()
        got = predictor.predict_batch(list(x))
        np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)
        np.testing.assert_allclose(expected[0], smooth_causal(raw[0], 0.9, 60), atol=1e-5)
    # Batching pads on the right: a short clip beside a long one keeps its frames.
    x = sample_raw_features(contract, 1, 150, rng)[0]
    alone = predictor.predict(x[:40])
    np.testing.assert_allclose(predictor.predict_batch([x[:40], x])[0], alone, atol=1e-6)


def test_an_export_without_smoothing_records_none(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    write_checkpoint(ckpt)
    path = export_checkpoint(ckpt, tmp_path / "m.onnx", model_name="m", model_version="1")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["mer.smoothing"]) == {"kind": "none"}
