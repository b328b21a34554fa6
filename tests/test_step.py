"""The single-step graph (model_export.step) and its runtime (app.core.step): parity with the sequence."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from app.core.contract import STEP_MODEL_KEY
from app.core.errors import ContractError
from app.core.predictor import Predictor
from app.core.step import StepModel
from model_export.export import export_checkpoint, legacy_exporter_quiet, sample_raw_features, verify_onnx
from model_export.smoothing import Smoothing
from model_export.step import (
    STEP_PARITY_TOLERANCE,
    StepModule,
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
    assert _frame_by_frame_gap(predictor, 1200, seed=7) <= STEP_PARITY_TOLERANCE
    assert predictor.info()["step_model"]["file"] == "m.step.onnx"


def _frame_by_frame_gap(predictor: Predictor, frames: int, seed: int) -> float:
    """Largest |step graph fed one frame at a time - whole-clip prediction| over random raw frames."""
    assert predictor.step is not None
    x = sample_raw_features(predictor.contract, 1, frames, np.random.default_rng(seed))[0]
    want = predictor.predict(x)
    state = predictor.step.initial_state()
    got = []
    for row in x:
        y, state = predictor.step.step(row, state)
        got.append(y)
    return float(np.max(np.abs(np.stack(got) - want)))


@pytest.mark.parametrize(
    ("preset", "overrides", "smoothing"),
    [
        ("LSTM_AT_400", {"hidden_sizes": [6], "attention_window": 5}, Smoothing(alpha=0.9, taps=7)),
        ("LSTM_NAT_400", {"hidden_sizes": [5]}, Smoothing(alpha=0.5, taps=3)),
    ],
)
def test_slices_of_any_length_equal_the_sequence_graph(
    tmp_path: Path, preset: str, overrides: dict[str, object], smoothing: Smoothing | None
) -> None:
    seq = _export(tmp_path, preset, overrides, smoothing)
    add_step_graph(seq, steps=200)
    whole = Predictor.load(seq, providers="cpu", intra_op_threads=1, slice_frames=0)
    assert whole.step is not None
    assert whole.step.slices
    x = sample_raw_features(whole.contract, 1, 257, np.random.default_rng(11))[0]
    want = whole.predict(x)
    assert not whole.slices_for(257)
    # Slices shorter than the attention window and the smoother's taps, about as long, and uneven.
    for lengths in ((3,), (5, 1, 8), (64,), (256,)):
        state = whole.step.initial_state()
        got, start = [], 0
        for length in itertools.cycle(lengths):
            if start >= len(x):
                break
            y, state = whole.step.run(x[start : start + length], state)
            assert y.shape == (len(x[start : start + length]), 2)
            got.append(y)
            start += length
        assert np.max(np.abs(np.concatenate(got) - want)) <= STEP_PARITY_TOLERANCE, lengths
    # The predictor cuts a clip longer than its slice length on its own, also inside a batch of one.
    sliced = Predictor.load(seq, providers="cpu", intra_op_threads=1, slice_frames=50)
    assert sliced.slices_for(257)
    assert not sliced.slices_for(50)
    assert np.max(np.abs(sliced.predict(x) - want)) <= STEP_PARITY_TOLERANCE
    (batch_of_one,) = sliced.predict_batch([x])
    assert np.array_equal(batch_of_one, sliced.predict(x))
    # Short clips and batches of several still take the sequence graph, bit for bit.
    assert np.array_equal(sliced.predict(x[:50]), whole.predict(x[:50]))
    pair = sliced.predict_batch([x, x[:30]])
    assert np.array_equal(pair[1], whole.predict_batch([x, x[:30]])[1])
    assert sliced.info()["step_model"]["slices"] is True
    assert sliced.info()["step_model"]["slice_frames"] == 50


def test_slice_frames_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slice_frames"):
        Predictor.load(export_tiny_model(tmp_path), providers="cpu", intra_op_threads=1, slice_frames=-1)


class _OneFrame(torch.nn.Module):
    """A step graph as exported before slices existed: features (B, F), emotion (B, O)."""

    def __init__(self, step: StepModule) -> None:
        super().__init__()
        self.step = step

    def forward(self, features: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emotion, *rest = self.step(features[:, None, :], *state)
        return (emotion[:, 0], *rest)


def test_a_one_frame_step_graph_still_serves_streams_but_not_slices(tmp_path: Path) -> None:
    seq = _export(tmp_path, "LSTM_AT_400", {"hidden_sizes": [6], "attention_window": 4}, Smoothing(0.8, 5))
    add_step_graph(seq, steps=20)
    module, _ = recover_export_module(seq)
    step = StepModule(module).eval()
    shapes = step.state_shapes(batch=2)
    names = list(shapes)
    legacy = step_file_for(seq)
    with torch.no_grad(), legacy_exporter_quiet():
        torch.onnx.export(
            _OneFrame(step),
            (torch.zeros(2, 6373), *(torch.zeros(shape) for shape in shapes.values())),
            str(legacy),
            dynamo=False,
            opset_version=17,
            input_names=["features", *names],
            output_names=["emotion", *(n + "_next" for n in names)],
            dynamic_axes={
                n: {0: "batch"} for n in ["features", "emotion", *names, *(m + "_next" for m in names)]
            },
        )
    proto = onnx.load(str(seq))
    for prop in proto.metadata_props:
        if prop.key == STEP_MODEL_KEY:
            record = json.loads(prop.value)
            record["sha256"] = hashlib.sha256(legacy.read_bytes()).hexdigest()
            prop.value = json.dumps(record)
    onnx.save(proto, str(seq))
    predictor = Predictor.load(seq, providers="cpu", intra_op_threads=1, slice_frames=10)
    assert predictor.step is not None
    assert not predictor.step.slices
    x = sample_raw_features(predictor.contract, 1, 40, np.random.default_rng(5))[0]
    state = predictor.step.initial_state()
    frames = []
    for row in x:
        y, state = predictor.step.step(row, state)
        frames.append(y)
    want = Predictor.load(seq, providers="cpu", intra_op_threads=1, slice_frames=0).predict(x)
    assert np.max(np.abs(np.stack(frames) - want)) <= STEP_PARITY_TOLERANCE
    # A 40-frame clip over the 10-frame slice length takes the sequence graph: this graph has no slices.
    assert not predictor.slices_for(40)
    assert np.array_equal(predictor.predict(x), want)
    assert predictor.info()["step_model"]["slice_frames"] == 0
    with pytest.raises(ContractError, match="one frame per call"):
        predictor.step.run(x[:3], predictor.step.initial_state())


def test_weights_recovered_from_an_onnx_file_reproduce_it(tmp_path: Path) -> None:
    seq = _export(tmp_path, "LSTM_AT_400", {"hidden_sizes": [6], "attention_window": 4}, Smoothing(0.8, 5))
    module, contract = recover_export_module(seq)
    assert verify_onnx(seq, module, contract) <= 1e-5


def test_an_ensemble_step_graph_carries_each_member_state_and_equals_its_sequence_graph(
    tmp_path: Path,
) -> None:
    paths = [tmp_path / f"m{k}.pt" for k in range(2)]
    for k, path in enumerate(paths):
        # The first as if trained with an input rank: kept factorised in both graphs.
        write_checkpoint(
            path,
            overrides={"hidden_sizes": [6], "attention_window": 4},
            seed=k,
            input_rank=3 if k == 0 else 0,
        )
    seq = export_checkpoint(
        paths, tmp_path / "e.onnx", model_name="e", model_version="1", smoothing=Smoothing(0.9, 7)
    )
    # The members come back from the file's own weights, one per /members.k scope.
    module, contract = recover_export_module(seq)
    assert [type(m).__name__ for m in module.models] == ["SubspaceInput", "EmotionRNN"]
    assert verify_onnx(seq, module, contract) <= 1e-5
    step_path, diff = add_step_graph(seq, steps=300)
    assert diff <= STEP_PARITY_TOLERANCE
    names = [i.name for i in onnx.load(str(step_path)).graph.input]
    assert names == [
        "features", "m0_h0", "m0_c0", "m0_past_h", "m0_y_prev", "m1_h0", "m1_c0", "m1_past_h", "m1_y_prev",
        "past_y", "frames",
    ]  # fmt: skip
    # Through the serving runtime, one frame at a time, against the whole clip.
    predictor = Predictor.load(seq, providers="cpu", intra_op_threads=1)
    assert _frame_by_frame_gap(predictor, 300, seed=9) <= STEP_PARITY_TOLERANCE


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
