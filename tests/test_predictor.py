"""Tests for app.core.predictor: loading and refusing models, providers, validation, batching, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.core.contract import NUM_COMPARE_FEATURES as F
from app.core.errors import ContractError, InvalidFeaturesError, ModelNotReadyError
from app.core.predictor import Predictor
from model_export.export import export_checkpoint, sample_raw_features
from model_export.testing import make_contract, write_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("predictor")
    write_checkpoint(tmp / "tiny.pt")
    return export_checkpoint(tmp / "tiny.pt", tmp / "tiny.onnx", model_name="tiny", model_version="7")


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.load(model_path, providers="cpu", intra_op_threads=1)


def raw(frames: int, seed: int = 0) -> np.ndarray:
    x: np.ndarray = sample_raw_features(make_contract(), 1, frames, np.random.default_rng(seed))[0]
    return x


def rewrite(src: Path, dst: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def set_meta(model: onnx.ModelProto, changes: dict[str, str | None]) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


# --- loading -------------------------------------------------------------------------------------------


def test_load_exposes_contract_and_identity(predictor: Predictor, model_path: Path) -> None:
    assert predictor.ready
    assert predictor.contract == make_contract()
    assert predictor.num_features == F
    assert predictor.outputs == ("arousal", "valence")
    assert (predictor.model_name, predictor.model_version) == ("tiny", "7")
    assert predictor.metadata["mer.dataset"] == "synthetic"
    assert predictor.provider == "CPUExecutionProvider"
    assert predictor.path == model_path
    info = predictor.info()
    assert info["num_features"] == F
    assert info["features"]["sample_rate"] == 16_000


@pytest.mark.parametrize("choice", ["cpu", "auto"])
def test_cpu_and_auto_run_on_cpu_here(model_path: Path, choice: Any) -> None:
    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # this build: CPU only
    p = Predictor.load(model_path, providers=choice, intra_op_threads=1, warmup=False)
    assert p.provider == "CPUExecutionProvider"
    assert not p.ready
    p.warmup()
    assert p.ready


def test_cuda_unavailable_is_a_clear_error(model_path: Path) -> None:
    with pytest.raises(ModelNotReadyError, match="CUDA was requested") as info:
        Predictor.load(model_path, providers="cuda", intra_op_threads=1)
    assert info.value.status_code == 503


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_cuda_never_silently_falls_back_to_cpu(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the build lists CUDA: ORT then cannot create it and runs on CPU; 'cuda' must refuse that,
    # 'auto' may accept it and says so.
    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(ModelNotReadyError, match=r"runs .* on CPUExecutionProvider"):
        Predictor.load(model_path, providers="cuda", intra_op_threads=1, warmup=False)
    auto = Predictor.load(model_path, providers="auto", intra_op_threads=1, warmup=False)
    assert auto.provider == "CPUExecutionProvider"


def test_bad_arguments(model_path: Path) -> None:
    with pytest.raises(ValueError, match="providers"):
        Predictor.load(model_path, providers="tpu", intra_op_threads=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thread"):
        Predictor.load(model_path, intra_op_threads=-1)


def test_missing_or_non_onnx_file_is_not_ready(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReadyError, match="does not exist"):
        Predictor.load(tmp_path / "nothing.onnx", intra_op_threads=1)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelNotReadyError, match="cannot load"):
        Predictor.load(junk, intra_op_threads=1)


def test_model_without_contract_is_refused(model_path: Path, tmp_path: Path) -> None:
    def strip(model: onnx.ModelProto) -> None:
        set_meta(model, {key: None for key in make_contract().to_metadata()})

    path = rewrite(model_path, tmp_path / "bare.onnx", strip)
    with pytest.raises(ContractError, match="lacks contract keys"):
        Predictor.load(path, intra_op_threads=1)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mer.num_features": "6000"}, "num_features"),
        ({"mer.norm_std": None}, "mer.norm_std"),
        ({"mer.feature_transform": '"log"'}, "feature_transform"),
        ({"mer.norm_mean": "float32le:AAAAAA=="}, "norm_mean has shape"),
        ({"mer.contract_version": "99"}, "contract_version"),
        # A valid contract that disagrees with the graph: one output named, the graph has two.
        ({"mer.outputs": '["arousal"]'}, "width 2"),
    ],
)
def test_tampered_contract_is_refused(
    model_path: Path, tmp_path: Path, changes: dict[str, str | None], match: str
) -> None:
    path = rewrite(model_path, tmp_path / "tampered.onnx", lambda m: set_meta(m, changes))
    with pytest.raises(ContractError, match=match) as info:
        Predictor.load(path, intra_op_threads=1)
    assert info.value.status_code == 500


def test_renamed_graph_input_is_refused(model_path: Path, tmp_path: Path) -> None:
    def rename(model: onnx.ModelProto) -> None:
        model.graph.input[0].name = "x"
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name == "features":
                    node.input[i] = "x"

    path = rewrite(model_path, tmp_path / "renamed.onnx", rename)
    with pytest.raises(ContractError, match="inputs are"):
        Predictor.load(path, intra_op_threads=1)


# --- prediction ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2, 61, 250])
def test_predict_shapes_and_range(predictor: Predictor, frames: int) -> None:
    y = predictor.predict(raw(frames, seed=frames))
    assert y.shape == (frames, 2)
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y) <= 1.0)


def test_predict_matches_the_graph_and_accepts_other_real_dtypes(predictor: Predictor) -> None:
    x = raw(30)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(predictor.path), options, providers=["CPUExecutionProvider"])
    (want,) = session.run(["emotion"], {"features": x[None]})
    np.testing.assert_allclose(predictor.predict(x), want[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(predictor.predict(x.astype(np.float64)), want[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(predictor.predict(np.asfortranarray(x)), want[0], atol=1e-6, rtol=0)
    ints = np.rint(x).clip(-1e6, 1e6).astype(np.int64)
    assert predictor.predict(ints).shape == (30, 2)


def test_predict_batch_equals_per_clip_predict(predictor: Predictor) -> None:
    # The model is causal: right-padding a clip inside a batch must not change its frames.
    clips = [raw(t, seed=t) for t in (61, 1, 17, 120, 2)]
    batched = predictor.predict_batch(clips)
    assert [y.shape for y in batched] == [(t, 2) for t in (61, 1, 17, 120, 2)]
    for clip, y in zip(clips, batched, strict=True):
        assert np.max(np.abs(y - predictor.predict(clip))) <= 1e-5
    assert predictor.predict_batch([]) == []


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: np.zeros((10, F - 1), np.float32), "got shape (10, 6372)"),
        (lambda: np.zeros(F, np.float32), "got shape (6373,)"),
        (lambda: np.zeros((1, 10, F), np.float32), "got shape (1, 10, 6373)"),
        (lambda: np.zeros((0, F), np.float32), "got shape (0, 6373)"),
        (lambda: np.zeros(()), "got shape ()"),
        (lambda: np.full((3, F), np.nan, np.float32), "NaN"),
        (lambda: np.where(np.arange(F) == 5, np.inf, 0.0)[None].repeat(2, 0), "column 5"),
        (lambda: np.full((2, F), 1e300), "beyond float32"),
        (lambda: [[0.0] * F, [0.0] * (F - 1)], "not an array"),
        (lambda: np.array([["a"] * F]), "real numbers"),
        (lambda: np.ones((2, F), dtype=complex), "real numbers"),
        (lambda: "features", "real numbers"),
    ],
    ids=[
        "width",
        "1d",
        "3d",
        "empty",
        "scalar",
        "nan",
        "inf",
        "overflow",
        "ragged",
        "strings",
        "complex",
        "str",
    ],
)
def test_invalid_features_are_422_naming_the_expected_shape(
    predictor: Predictor, make: Callable[[], Any], detail: str
) -> None:
    with pytest.raises(InvalidFeaturesError) as info:
        predictor.predict(make())
    assert info.value.status_code == 422
    assert info.value.code == "invalid_features"
    assert f"(T, {F}) with T >= 1" in info.value.message
    assert detail in info.value.message


def test_invalid_clip_in_a_batch_is_named(predictor: Predictor) -> None:
    with pytest.raises(InvalidFeaturesError, match=r"clip 1: .*\(T, 6373\)"):
        predictor.predict_batch([raw(3), np.zeros((3, 5), np.float32)])


def test_concurrent_predictions_are_identical(predictor: Predictor) -> None:
    clips = [raw(t, seed=t) for t in (5, 40, 61, 90)]
    expected = [predictor.predict(c) for c in clips]
    results: list[list[np.ndarray]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            start.wait()
            for rep in range(6):
                i = (k + rep) % len(clips)
                results[k].append(predictor.predict(clips[i]))
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k in range(8):
        for rep, y in enumerate(results[k]):
            np.testing.assert_array_equal(y, expected[(k + rep) % len(clips)])


def test_module_imports_neither_torch_onnx_nor_fastapi() -> None:
    code = (
        "import sys, app.core.predictor; "
        "print(sorted(m for m in ('torch', 'onnx', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
