"""The single-step graph (model_export.step) and its runtime (app.core.step): parity with the sequence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.core.contract import STEP_MODEL_KEY
from app.core.errors import ContractError
from app.core.predictor import Predictor
from app.core.step import StepModel
from model_export.export import export_checkpoint, sample_raw_features, verify_onnx
from model_export.smoothing import Smoothing
from model_export.step import (
    STEP_PARITY_TOLERANCE,
    add_step_graph,
    recover_export_module,
    step_file_for,
    verify_step,
)
from model_export.testing import export_tiny_model, make_contract, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export(tmp_path: Path, preset: str, overrides: dict[str, object], smoothing: Smoothing | None) -> Path:
    ckpt = tmp_path / "m.pt"
    write_checkpoint(ckpt, preset=preset, overrides=overrides, seed=3)
    out = tmp_path / "m.onnx"
    return export_checkpoint(ckpt, out, model_name="m", model_version="1", smoothing=smoothing)


@pytest.mark.parametrize(
    ("preset", "overrides", "smoothing"),
    [
        ("LSTM_AT_400", {"hidden_sizes": [6], "attention_window": 5}, Smoothing(alpha=0.9, taps=7)),
        ("LSTM_AT_400", {"hidden_sizes": [6, 3], "attention_window": 3, "attention_dim": 4}, None),
        ("LSTM_NAT_400", {"hidden_sizes": [5]}, Smoothing(alpha=0.5, taps=3)),
        ("LSTM_NAT_400", {"hidden_sizes": [5], "output_feedback": False}, None),
    ],
)
def test_the_step_graph_equals_the_sequence_graph_over_1200_steps(
    tmp_path: Path, preset: str, overrides: dict[str, object], smoothing: Smoothing | None
) -> None:
    seq = _export(tmp_path, preset, overrides, smoothing)
    step_path, diff = add_step_graph(seq)
    assert step_path == step_file_for(seq) == tmp_path / "m.step.onnx"
    assert diff <= STEP_PARITY_TOLERANCE
    # Independently of the export's own check: another seed, through the serving runtime.
    predictor = Predictor.load(seq, providers="cpu", intra_op_threads=1)
    assert predictor.step is not None
    x = sample_raw_features(predictor.contract, 1, 1200, np.random.default_rng(7))[0]
    want = predictor.predict(x)
    state = predictor.step.initial_state()
    got = []
    for row in x:
        y, state = predictor.step.step(row, state)
        got.append(y)
    assert np.max(np.abs(np.stack(got) - want)) <= STEP_PARITY_TOLERANCE
    assert predictor.info()["step_model"]["file"] == "m.step.onnx"


def test_weights_recovered_from_an_onnx_file_reproduce_it(tmp_path: Path) -> None:
    seq = _export(tmp_path, "LSTM_AT_400", {"hidden_sizes": [6], "attention_window": 4}, Smoothing(0.8, 5))
    module, contract = recover_export_module(seq)
    assert verify_onnx(seq, module, contract) <= 1e-5


def test_adding_the_step_graph_changes_only_one_metadata_entry(tmp_path: Path) -> None:
    seq = export_tiny_model(tmp_path)
    before = onnx.load(str(seq))
    add_step_graph(seq, steps=50)
    after = onnx.load(str(seq))
    assert before.graph == after.graph
    old = {p.key: p.value for p in before.metadata_props}
    new = {p.key: p.value for p in after.metadata_props}
    assert set(new) - set(old) == {STEP_MODEL_KEY}
    assert all(new[k] == v for k, v in old.items())
    record = json.loads(new[STEP_MODEL_KEY])
    assert record["file"] == "tiny.step.onnx"
    assert record["steps"] == 50
    assert len(record["sha256"]) == 64
    add_step_graph(seq, steps=50)  # again: replaced, not duplicated
    assert [p.key for p in onnx.load(str(seq)).metadata_props].count(STEP_MODEL_KEY) == 1


def test_serving_refuses_a_step_graph_that_is_not_the_models(tmp_path: Path) -> None:
    seq = export_tiny_model(tmp_path, step=True)
    step = step_file_for(seq)
    data = step.read_bytes()
    step.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ContractError, match="not the step graph"):
        Predictor.load(seq, providers="cpu", intra_op_threads=1)


def test_a_missing_step_file_serves_whole_clips_and_says_why_streams_are_off(tmp_path: Path) -> None:
    seq = export_tiny_model(tmp_path, step=True)
    step_file_for(seq).unlink()
    predictor = Predictor.load(seq, providers="cpu", intra_op_threads=1)
    assert predictor.ready
    assert predictor.step is None
    problem = predictor.info()["step_model_problem"]
    assert "not beside" in problem
    assert step_file_for(seq).name in problem
    assert predictor.predict(np.zeros((3, predictor.num_features), np.float32)).shape == (3, 2)


def test_a_renamed_copy_finds_its_step_graph_under_either_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    seq = export_tiny_model(tmp_path / "a", step=True)
    step = step_file_for(seq)
    both = tmp_path / "both"
    both.mkdir()
    # A copy named custom.onnx with its step graph renamed the same way: found by the sibling name.
    (both / "custom.onnx").write_bytes(seq.read_bytes())
    (both / "custom.step.onnx").write_bytes(step.read_bytes())
    loaded = Predictor.load(both / "custom.onnx", providers="cpu", intra_op_threads=1)
    assert loaded.step is not None
    assert loaded.step.path.name == "custom.step.onnx"
    # Only the recorded name beside it: found by that.
    (both / "custom.step.onnx").unlink()
    (both / step.name).write_bytes(step.read_bytes())
    loaded = Predictor.load(both / "custom.onnx", providers="cpu", intra_op_threads=1)
    assert loaded.step is not None
    assert loaded.step.path.name == step.name
    # A stale file under the sibling name does not shadow the right one under the recorded name.
    (both / "custom.step.onnx").write_bytes(step.read_bytes()[:-1] + b"\0")
    loaded = Predictor.load(both / "custom.onnx", providers="cpu", intra_op_threads=1)
    assert loaded.step is not None
    assert loaded.step.path.name == step.name
    (both / step.name).unlink()
    with pytest.raises(ContractError, match="not the step graph"):
        Predictor.load(both / "custom.onnx", providers="cpu", intra_op_threads=1)


def test_a_model_without_a_step_graph_loads_without_one(tmp_path: Path) -> None:
    predictor = Predictor.load(export_tiny_model(tmp_path), providers="cpu", intra_op_threads=1)
    assert predictor.step is None
    assert predictor.info()["step_model"] is None


def test_a_step_record_naming_a_path_elsewhere_is_refused(tmp_path: Path) -> None:
    meta = {STEP_MODEL_KEY: json.dumps({"file": "../x.onnx", "sha256": "0" * 64})}
    with pytest.raises(ContractError, match="beside the model"):
        StepModel.load(tmp_path / "m.onnx", meta, num_features=6373, num_outputs=2)


def test_verify_step_fails_loudly_on_a_wrong_graph(tmp_path: Path) -> None:
    a = _export(tmp_path, "LSTM_AT_400", {"hidden_sizes": [6], "attention_window": 4}, None)
    add_step_graph(a, steps=20)
    other = tmp_path / "other"
    other.mkdir()
    ckpt = other / "m.pt"
    write_checkpoint(ckpt, overrides={"hidden_sizes": [6], "attention_window": 4}, seed=99)
    b = export_checkpoint(ckpt, other / "m.onnx", model_name="m", model_version="1")
    with pytest.raises(Exception, match="differs from the sequence graph"):
        verify_step(step_file_for(a), b, make_contract(), steps=20)
