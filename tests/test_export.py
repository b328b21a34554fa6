"""Tests for model_export.export: checkpoint -> verified ONNX with the contract in its metadata."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from app.core.contract import NUM_COMPARE_FEATURES, ModelContract
from app.core.errors import ContractError
from model_export.checkpoint import load_checkpoint
from model_export.export import (
    ExportError,
    ExportModule,
    export_checkpoint,
    sample_raw_features,
    verify_onnx,
)
from model_export.model import ModelConfig, build_model
from model_export.smoothing import Smoothing
from model_export.testing import TINY_OVERRIDES, make_contract, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
F = NUM_COMPARE_FEATURES  # the real ComParE_2016 width: ModelContract.validate() insists on it


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    (y,) = session.run(["emotion"], {"features": x})
    return np.asarray(y)


def run_torch(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy())


class Exported:
    def __init__(self, tmp: Path) -> None:
        self.ckpt = tmp / "tiny.pt"
        self.model, self.contract = write_checkpoint(self.ckpt)
        self.onnx = tmp / "tiny.onnx"
        start = time.perf_counter()
        export_checkpoint(self.ckpt, self.onnx, model_name="tiny", model_version="1.2.3")
        self.seconds = time.perf_counter() - start
        self.module = ExportModule(self.model, self.contract).eval()
        self.session = ort_session(self.onnx)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported(tmp_path_factory.mktemp("export"))


# --- metadata ------------------------------------------------------------------------------------------


def test_metadata_carries_the_full_contract_and_provenance(exported: Exported) -> None:
    meta = exported.session.get_modelmeta().custom_metadata_map
    assert ModelContract.from_metadata(meta) == exported.contract
    for key, value in exported.contract.to_metadata().items():
        assert meta[key] == value  # bit-exact statistics, not just "equal after parsing"
    assert ModelConfig.from_dict(json.loads(meta["mer.model_config"])) == exported.model.config
    train_cfg = json.loads(meta["mer.train_config"])
    assert train_cfg["model_overrides"] == TINY_OVERRIDES
    assert train_cfg["feature_transform"] == exported.contract.feature_transform
    assert meta["mer.model_name"] == "tiny"
    assert meta["mer.model_version"] == "1.2.3"
    assert meta["mer.dataset"] == "synthetic"
    assert json.loads(meta["mer.metrics"]) == {"best_epoch": 2, "best_val_mse": 0.12, "clips": 40}
    assert meta["mer.weights_dtype"] == "float32"
    versions = json.loads(meta["mer.versions"])
    assert set(versions) == {"torch", "onnx", "onnxruntime", "opensmile", "python"}
    assert versions["onnxruntime"] == ort.__version__
    assert versions["torch"] == torch.__version__
    when = dt.datetime.fromisoformat(meta["mer.export_date"])
    assert when.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 3600


def test_interface_is_features_to_emotion_with_dynamic_batch_and_time(exported: Exported) -> None:
    (inp,) = exported.session.get_inputs()
    (out,) = exported.session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("features", "tensor(float)", ["batch", "time", F])
    assert (out.name, out.type, out.shape) == ("emotion", "tensor(float)", ["batch", "time", 2])
    assert exported.onnx.stat().st_mode & 0o777 == 0o644  # readable by a service running as another user
    assert [p.name for p in exported.onnx.parent.iterdir() if p.name.endswith(".tmp")] == []


# --- numerics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2, 61, 300])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch_on_raw_features(exported: Exported, batch: int, frames: int) -> None:
    x = sample_raw_features(exported.contract, batch, frames, np.random.default_rng(frames))
    got = run_ort(exported.session, x)
    assert got.shape == (batch, frames, 2)
    assert np.max(np.abs(got - run_torch(exported.module, x))) <= 1e-4


def test_graph_normalises_exactly_like_the_contract(exported: Exported) -> None:
    # The in-graph front must be contract.normalise (the reference implementation) and nothing else.
    x = sample_raw_features(exported.contract, 2, 61, np.random.default_rng(7))
    z = exported.contract.normalise(x)
    want = run_torch(exported.model, z)
    assert np.max(np.abs(run_ort(exported.session, x) - want)) <= 1e-4


def _previous_signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """The graph's front before 2026-12-02: Goldberg's log1p with a Where, times the sign."""
    u = torch.abs(x)
    w = 1.0 + u
    return torch.sign(x) * torch.where(w == 1.0, u, torch.log(w) * (u / (w - 1.0)))


def _previous_context(alpha: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The attention context before 2026-12-02: one multiply-add per offset."""
    w = alpha.shape[-1]
    context = alpha[..., 0:1] * states[:, w - 1 : -1]
    for d in range(2, w + 1):
        context = context + alpha[..., d - 1 : d] * states[:, w - d : -d]
    return context


class _PreviousNormaliser(torch.nn.Module):
    def __init__(self, contract: ModelContract) -> None:
        super().__init__()
        self.mean = torch.from_numpy(contract.norm_mean.copy())
        self.std = torch.from_numpy(contract.norm_std.copy())
        self.clip_z = contract.clip_z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp((_previous_signed_log1p(x) - self.mean) / self.std, -self.clip_z, self.clip_z)


@pytest.mark.parametrize("preset", ["tiny", "LSTM_AT_400"])
def test_the_faster_graph_equals_the_previous_one(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fewer-pass normaliser and the banded attention context change outputs by <= 1e-5 (ORT vs ORT)."""
    import model_export.export as export_module
    import model_export.model as model_module

    ckpt = tmp_path / "m.pt"
    overrides: dict[str, Any] | None = None if preset == "tiny" else {}
    _, contract = write_checkpoint(ckpt, overrides=overrides)
    export_checkpoint(ckpt, tmp_path / "new.onnx", model_name="m", model_version="1")
    new = ort_session(tmp_path / "new.onnx")
    monkeypatch.setattr(model_module, "_banded_context", _previous_context)
    monkeypatch.setattr(
        export_module, "Normaliser", lambda mean, std, transform, clip_z: _PreviousNormaliser(contract)
    )
    export_checkpoint(ckpt, tmp_path / "old.onnx", model_name="m", model_version="1")
    old = ort_session(tmp_path / "old.onnx")

    def ops(name: str) -> list[str]:
        return [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node]

    # The context is one MatMul, not a multiply-add per window offset; the front has no Sign, one Where
    # (the masked scores') and no division by the std.
    def mul_add(name: str) -> int:
        return ops(name).count("Mul") + ops(name).count("Add")

    assert mul_add("new.onnx") < (0.5 if preset == "LSTM_AT_400" else 1.0) * mul_add("old.onnx")
    assert ops("new.onnx").count("Where") == 1
    assert "Sign" not in ops("new.onnx")
    assert ops("new.onnx").count("Div") == ops("old.onnx").count("Div") - 1
    rng = np.random.default_rng(3)
    for frames in (1, 7, 61, 300):
        x = sample_raw_features(contract, 2, frames, rng)
        x[0, :, :40] = rng.choice([0.0, 1e-12, 3e-9, -2e-8, 1e-6, -5e-4, 1e10, -3e12], size=(frames, 40))
        assert np.max(np.abs(run_ort(new, x) - run_ort(old, x))) <= 1e-5, frames


def test_extreme_raw_values_give_finite_outputs_in_range(exported: Exported) -> None:
    t = 20
    big = np.float32(np.finfo(np.float32).max)
    x = np.zeros((4, t, F), dtype=np.float32)
    x[1] = 1e12
    x[2] = -1e12
    x[3, ::2] = big  # the largest float32: the compression and the clip must keep it finite
    x[3, 1::2] = -big
    y = run_ort(exported.session, x)
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y) <= 1.0)
    assert np.max(np.abs(y - run_torch(exported.module, x))) <= 1e-4


def test_verify_rejects_a_graph_that_differs_from_the_module(exported: Exported) -> None:
    other = ExportModule(build_model(exported.model.config, seed=1).eval(), exported.contract).eval()
    with pytest.raises(ExportError, match="ORT - PyTorch"):
        verify_onnx(exported.onnx, other, exported.contract)
    assert verify_onnx(exported.onnx, exported.module, exported.contract) <= 1e-4


# --- fp16 ----------------------------------------------------------------------------------------------


def test_fp16_weights_halve_the_file_and_stay_close(exported: Exported, tmp_path: Path) -> None:
    path = export_checkpoint(
        exported.ckpt, tmp_path / "half.onnx", model_name="t", model_version="1", fp16=True
    )
    model = onnx.load(str(path))
    halves = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert halves, "the 6373-wide input weights must be stored as float16"
    assert all(int(np.prod(i.dims)) >= 1024 for i in halves)
    # Every converted weight saves 2 bytes per element (the tiny model's file is dominated by the
    # float32 statistics, which stay float32; for LSTM_AT_400 the file halves, 45 -> 23 MB).
    saved = exported.onnx.stat().st_size - path.stat().st_size
    assert saved >= 0.95 * sum(2 * int(np.prod(i.dims)) for i in halves)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mer.weights_dtype"] == "float16"
    assert ModelContract.from_metadata(meta) == exported.contract  # statistics stay exact float32
    # Against the float32 model the only change is the weights' rounding to float16.
    x = sample_raw_features(exported.contract, 2, 61, np.random.default_rng(3))
    y = run_ort(ort_session(path), x)
    assert np.max(np.abs(y - run_torch(exported.module, x))) <= 1e-2


# --- ensembles -----------------------------------------------------------------------------------------


def test_an_ensemble_graph_is_the_mean_of_its_members_behind_the_same_interface(tmp_path: Path) -> None:
    smoothing = Smoothing(alpha=0.9, taps=7)
    paths = [tmp_path / f"m{k}.pt" for k in range(3)]
    members = [write_checkpoint(path, seed=k)[0] for k, path in enumerate(paths)]
    contract = make_contract()
    out = export_checkpoint(
        paths, tmp_path / "e.onnx", model_name="e", model_version="1", smoothing=smoothing
    )
    session = ort_session(out)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, outp.name, outp.shape) == (
        "features",
        ["batch", "time", F],
        "emotion",
        ["batch", "time", 2],
    )
    singles = [ExportModule(m, contract, smoothing).eval() for m in members]
    for batch, frames in ((1, 1), (3, 61), (2, 150)):
        x = sample_raw_features(contract, batch, frames, np.random.default_rng(frames))
        want = np.mean([run_torch(single, x) for single in singles], axis=0)
        got = run_ort(session, x)
        assert np.max(np.abs(got - want)) <= 1e-4
        # Not one member's output: each differs from the mean.
        assert all(np.max(np.abs(run_torch(single, x) - want)) > 1e-3 for single in singles)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["mer.ensemble"]) == {"members": 3}
    assert [c["seed"] for c in json.loads(meta["mer.train_config"])] == [0, 1, 2]
    assert json.loads(meta["mer.metrics"]) == {
        "members": [{"best_epoch": 2, "best_val_mse": 0.12, "clips": 40}] * 3
    }
    assert ModelContract.from_metadata(meta) == contract
    # fp16 rounds every member's weights, as for one model: close to the float32 ensemble.
    half = export_checkpoint(
        paths, tmp_path / "h.onnx", model_name="e", model_version="1", fp16=True, smoothing=smoothing
    )
    x = sample_raw_features(contract, 1, 61, np.random.default_rng(5))
    assert np.max(np.abs(run_ort(ort_session(half), x) - run_ort(session, x))) < 1e-2


def test_ensemble_members_must_share_the_contract_and_the_architecture(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    write_checkpoint(a)
    write_checkpoint(b, contract=make_contract(seed=1))  # trained on other statistics
    write_checkpoint(c, overrides={**TINY_OVERRIDES, "hidden_sizes": [5]})
    out = tmp_path / "e.onnx"
    with pytest.raises(ValueError, match=r"contract differs .*mer\.norm_mean"):
        export_checkpoint([a, b], out, model_name="e", model_version="1")
    with pytest.raises(ValueError, match="architecture"):
        export_checkpoint([a, c], out, model_name="e", model_version="1")
    with pytest.raises(ValueError, match="no model"):
        ExportModule([], make_contract())
    assert not out.exists()


# --- bad inputs ----------------------------------------------------------------------------------------


def test_load_checkpoint_returns_eval_model_contract_and_meta(exported: Exported) -> None:
    model, contract, meta = load_checkpoint(exported.ckpt)
    assert not model.training
    assert contract == exported.contract
    assert "state_dict" not in meta
    assert meta["best_epoch"] == 2
    for name, tensor in exported.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0)


def test_checkpoint_missing_keys_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    torch.save({"model_config": {}, "state_dict": {}}, ckpt)
    with pytest.raises(ValueError, match="contract"):
        load_checkpoint(ckpt)


def test_contract_disagreeing_with_model_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    # One named output, but the model (from the train config's two targets) has two.
    write_checkpoint(ckpt, contract=make_contract(outputs=("arousal",)))
    with pytest.raises(ContractError, match="outputs"):
        load_checkpoint(ckpt)


def test_invalid_contract_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    bad = make_contract().to_metadata()
    bad["mer.clip_z"] = "-1"
    write_checkpoint(ckpt, replace={"contract": bad})
    with pytest.raises(ContractError, match="clip_z"):
        load_checkpoint(ckpt)


def test_extra_metadata_cannot_override_the_contract(exported: Exported, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"mer\.norm_mean"):
        export_checkpoint(
            exported.ckpt, out, model_name="t", model_version="1", extra_metadata={"mer.norm_mean": "x"}
        )
    assert not out.exists()


def test_failed_verification_leaves_no_file(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: Any, **__: Any) -> float:
        raise ExportError("boom")

    monkeypatch.setattr("model_export.export.verify_onnx", fail)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="boom"):
        export_checkpoint(exported.ckpt, out, model_name="t", model_version="1")
    assert list(tmp_path.iterdir()) == []


# --- full size -----------------------------------------------------------------------------------------

MEMORY_PROBE = """
import sys
import numpy as np
import psutil
from app.core.predictor import Predictor

def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

p = Predictor.load(sys.argv[1], providers="cpu", intra_op_threads=1)
x = np.random.default_rng(0).standard_normal((int(sys.argv[2]), p.num_features)).astype(np.float32)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: load and warm-up peaks do not count
rss = psutil.Process().memory_info().rss
y = p.predict(x)
print(peak_rss() - rss, y.shape, bool(np.isfinite(y).all()))
"""


@pytest.mark.slow
def test_lstm_at_400_exports_and_runs_1200_frames_in_bounded_memory(tmp_path: Path) -> None:
    ckpt = tmp_path / "at400.pt"
    write_checkpoint(ckpt, overrides={})  # the paper's LSTM_AT_400, W = 60
    start = time.perf_counter()
    path = export_checkpoint(ckpt, tmp_path / "at400.onnx", model_name="at400", model_version="0")
    assert time.perf_counter() - start < 60
    # A fresh process holding only onnxruntime, like the service. ru_maxrss would not do: Linux carries
    # it across fork + exec from this (torch-sized) process; VmHWM is per address space and resettable.
    # The peak is read after one 1200-frame (10 min) request, relative to the RSS after load and warm-up.
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), "1200"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    increase, rest = probe.stdout.strip().split(" ", 1)
    assert rest == "(1200, 2) True"
    # The (T, F) input is 1200 * 6373 * 4 B = 30.6 MB; the normaliser's element-wise chain holds a few
    # such buffers (measured: ~100 MB in all, ~3.3 inputs, linear in T: 39 MB at 600, 222 MB at 2400).
    # 200 MB leaves 2x headroom for allocator growth but catches materialising the attention as
    # (T, W, A) (another 115 MB) or (T, T, A).
    assert int(increase) < 200e6, probe.stdout


def test_a_model_trained_with_an_input_rank_is_exported_factorised_and_computes_the_same(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "r.pt"
    model, contract = write_checkpoint(ckpt, overrides={**TINY_OVERRIDES, "hidden_sizes": [16]}, input_rank=6)
    compact = export_checkpoint(ckpt, tmp_path / "compact.onnx", model_name="r", model_version="1")
    wide = export_checkpoint(ckpt, tmp_path / "wide.onnx", model_name="r", model_version="1", factorise=False)
    nodes = {n.name for n in onnx.load(str(compact)).graph.node}
    assert {"/model/MatMul", "/model/inner/encoder.0/LSTM"} <= nodes  # x @ B, then the 6-wide LSTM
    assert "/model/encoder.0/LSTM" in {n.name for n in onnx.load(str(wide)).graph.node}
    # (6373 + 64) x 6 weights instead of 6373 x 64: a tenth of the file, the same outputs.
    assert compact.stat().st_size < 0.2 * wide.stat().st_size
    module = ExportModule(model, contract).eval()
    for frames in (1, 61, 150):
        x = sample_raw_features(contract, 2, frames, np.random.default_rng(frames))
        assert np.max(np.abs(run_ort(ort_session(compact), x) - run_torch(module, x))) <= 1e-4
    # A checkpoint that claims an input rank its weights do not have is refused, not exported wrong.
    write_checkpoint(ckpt, overrides={**TINY_OVERRIDES, "hidden_sizes": [16]})
    full_rank = torch.load(ckpt, weights_only=False)
    full_rank["train_config"]["input_rank"] = 6
    torch.save(full_rank, ckpt)
    with pytest.raises(ValueError, match="rank above 6"):
        export_checkpoint(ckpt, tmp_path / "bad.onnx", model_name="r", model_version="1")
