"""Tests for model_export.model: shapes, causality, attention (eqs. 15-17), padding, ONNX parity."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model_export.model import (
    PRESETS,
    CausalWindowAttention,
    EmotionRNN,
    ModelConfig,
    SubspaceInput,
    build_model,
    export_onnx,
    fast_cpu_context,
    from_preset,
)

F_SMALL = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(kind: str = "AT", **kw: Any) -> EmotionRNN:
    fields: dict[str, Any] = {
        "kind": kind,
        "hidden_sizes": (16, 12),
        "num_features": F_SMALL,
        "attention_window": 5,
    }
    fields.update(kw)
    return build_model(ModelConfig(**fields), seed=0).eval()


def feats(b: int, t: int, f: int = F_SMALL, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, f, generator=torch.Generator().manual_seed(seed))


def run(model: EmotionRNN, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y: torch.Tensor = model(x)
    return y


# --- configuration -----------------------------------------------------------------------------------


def test_presets_have_paper_names_and_build_with_expected_shapes() -> None:
    expected = {f"LSTM_{k}_{s}" for k in ("AT", "NAT") for s in ("400", "300", "200", "300_128", "400_200")}
    assert set(PRESETS) == expected
    x = feats(2, 7, 8)
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert cfg.num_features == 6373
        model = from_preset(name, num_features=8, seed=0).eval()
        assert [lstm.hidden_size for lstm in model.encoder] == list(cfg.hidden_sizes)
        assert (model.attention is not None) == (cfg.kind == "AT")
        y = run(model, x)
        assert y.shape == (2, 7, 2)
        assert y.abs().max() <= 1.0
    one = from_preset("LSTM_AT_300_128", num_features=8, num_outputs=1)
    assert one.eval()(x).shape == (2, 7, 1)


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    cfg = ModelConfig(kind="AT", hidden_sizes=(300, 128), attention_dim=64, num_outputs=1, dropout=0.2)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert hash(again) == hash(cfg)
    assert ModelConfig.from_dict(PRESETS["LSTM_AT_400"].to_dict()).attention_size == 400
    assert cfg.attention_size == 64
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"kind": "AT", "bogus": 1})
    for bad in (
        {"kind": "GRU"},
        {"hidden_sizes": ()},
        {"hidden_sizes": (4, 4, 4)},
        {"attention_window": 0},
        {"dropout": 1.0},
        {"num_outputs": 0},
    ):
        with pytest.raises(ValueError, match="invalid ModelConfig"):
            ModelConfig(**bad)
    with pytest.raises(KeyError):
        from_preset("LSTM_AT_999")


def test_seeded_builds_are_identical_and_leave_global_rng_alone() -> None:
    cfg = ModelConfig(hidden_sizes=(16, 12), num_features=F_SMALL, attention_window=5)
    state = torch.random.get_rng_state()
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = build_model(cfg, seed=4)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if "bias" not in name:  # biases start at fixed values (zero, forget gate one)
            assert not torch.equal(pa, pc), name
    x = feats(3, 20)
    assert torch.equal(run(a.eval(), x), run(a, x))
    assert torch.equal(run(a, x), run(b.eval(), x))


# --- behaviour ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["AT", "NAT"])
def test_outputs_are_causal(kind: str) -> None:
    model = small(kind)
    x = feats(2, 30)
    y = run(model, x)
    t = 11
    x2 = x.clone()
    x2[:, t] += 5.0
    y2 = run(model, x2)
    torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=0)
    assert (y2[:, t:] - y[:, t:]).abs().amax(dim=(0, 2)).min() > 0  # frame t and everything after move


@pytest.mark.parametrize("kind", ["AT", "NAT"])
def test_right_padded_batch_equals_clips_alone(kind: str) -> None:
    model = small(kind)
    lengths = [13, 7, 1, 10]
    clips = [feats(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    t_max = max(lengths)
    # Padding is noise, not zeros: valid outputs must not depend on it at all.
    batch = feats(len(lengths), t_max, seed=99) * 3
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
    y_batch = run(model, batch)
    for i, clip in enumerate(clips):
        alone = run(model, clip[None])
        assert (y_batch[i, : len(clip)] - alone[0]).abs().max().item() <= 1e-5


def test_outputs_in_range_even_for_extreme_inputs() -> None:
    for model in (small("AT"), small("NAT"), small("AT", output_feedback=False, num_outputs=1)):
        y = run(model, feats(2, 40) * 1e3)
        assert torch.isfinite(y).all()
        assert y.abs().max() <= 1.0


def test_output_layer_feeds_back_previous_output() -> None:
    # eq. 14: y_t = tanh(W_z [h_t; c_t] + W_y y_{t-1} + b), y_0 = 0, from the model's own outputs.
    model = small("AT", num_outputs=2)
    x = feats(2, 9)
    with torch.no_grad():
        h = model.encode(x)
        assert model.attention is not None
        c, _ = model.attention(h)
        z = torch.cat([h, c], dim=-1)
        assert model.output_rnn is not None
        w_ih, w_hh, b_ih, b_hh = model.output_rnn.all_weights[0]
        y_prev = torch.zeros(2, 2)
        expected = []
        for t in range(9):
            y_prev = torch.tanh(z[:, t] @ w_ih.T + b_ih + y_prev @ w_hh.T + b_hh)
            expected.append(y_prev)
        torch.testing.assert_close(model(x), torch.stack(expected, dim=1), atol=1e-6, rtol=0)


def test_dropout_only_in_training() -> None:
    model = small("AT", dropout=0.5)
    x = feats(2, 10)
    assert torch.equal(run(model, x), run(model, x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(run(model, x), run(model.eval(), x))


# --- attention ------------------------------------------------------------------------------------------


def reference_attention(att: CausalWindowAttention, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 15-17 literally: loops over t and j in [t-W, t-1]; returns c (B,T,H) and dense alpha (B,T,T)."""
    b, t_len, _ = h.shape
    w_mat, bias = att.query.weight, att.query.bias
    u_mat, v = att.key.weight, att.score.weight[0]
    alpha = torch.zeros(b, t_len, t_len)
    context = torch.zeros_like(h)
    for t in range(1, t_len):
        js = list(range(max(0, t - att.window), t))
        e = torch.stack(
            [torch.sigmoid(h[:, t - 1] @ w_mat.T + bias + h[:, j] @ u_mat.T) @ v for j in js], dim=-1
        )
        a = torch.softmax(e, dim=-1)
        alpha[:, t, js] = a
        context[:, t] = (a[..., None] * h[:, js]).sum(dim=1)
    return context, alpha


def dense(alpha: torch.Tensor) -> torch.Tensor:
    """Banded (B,T,W) weights, slot d-1 = frame t-d, to dense (B,T,T) over j."""
    b, t_len, w = alpha.shape
    out = torch.zeros(b, t_len, t_len)
    for t in range(t_len):
        for d in range(1, min(w, t) + 1):
            out[:, t, t - d] = alpha[:, t, d - 1]
    return out


@pytest.mark.parametrize(("window", "t_len"), [(5, 17), (5, 3), (30, 17), (1, 6)])
def test_attention_matches_literal_equations(window: int, t_len: int) -> None:
    torch.manual_seed(1)
    att = CausalWindowAttention(hidden_size=6, attention_dim=4, window=window)
    h = torch.randn(2, t_len, 6)
    with torch.no_grad():
        c, alpha = att(h)
        c_ref, alpha_ref = reference_attention(att, h)
    assert alpha.shape == (2, t_len, window)
    torch.testing.assert_close(dense(alpha), alpha_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-6, rtol=0)


def test_attention_weights_are_a_causal_window() -> None:
    w = 5
    model = small("AT", attention_window=w)
    with torch.no_grad():
        alpha = model.attention_weights(feats(3, 12))
        assert model.attention is not None
        c, _ = model.attention(model.encode(feats(3, 12)))
    assert alpha.shape == (3, 12, w)
    full = dense(alpha)
    t_idx = torch.arange(12)[:, None]
    j_idx = torch.arange(12)[None, :]
    outside = (j_idx >= t_idx) | (j_idx < t_idx - w)
    assert (full[:, outside] == 0).all()
    assert (alpha[:, 0] == 0).all()
    assert torch.equal(c[:, 0], torch.zeros_like(c[:, 0]))
    torch.testing.assert_close(alpha[:, 1:].sum(-1), torch.ones(3, 11))
    assert (alpha[:, 1:] >= 0).all()
    with pytest.raises(ValueError, match="no attention"):
        small("NAT").attention_weights(feats(1, 3))


class _LargestTensor(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.max_numel = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.max_numel = max(self.max_numel, leaf.numel())
        return out


def test_attention_never_materialises_the_window_of_every_frame() -> None:
    # No op may produce the (B,T,W,A) tensor a naive implementation would. The largest allowed is a
    # padded (B, T+W, A|H) or the context's skewed band, (B, T, T+W+1): one float per (frame, past
    # frame), 1.6 kB per frame of a 400-frame clip against the states' 1.6 kB (H = 400).
    b, t_len, hidden, a_dim, w = 2, 400, 32, 400, 60  # the shipped attention size and window
    att = CausalWindowAttention(hidden, a_dim, w)
    h = torch.randn(b, t_len, hidden)
    with torch.no_grad(), _LargestTensor() as rec:
        att(h)
    assert rec.max_numel <= max(b * (t_len + w) * max(hidden, a_dim, w), b * t_len * (t_len + w + 1))
    assert rec.max_numel < b * t_len * w * a_dim


# --- CPU speed helper ---------------------------------------------------------------------------------


def test_fast_cpu_context_disables_onednn_and_restores_settings() -> None:
    model = small("AT")
    x = feats(2, 15)
    threads = torch.get_num_threads()
    before = bool(torch.backends.mkldnn.enabled)
    ref = run(model, x)
    with fast_cpu_context(num_threads=1):
        assert not torch.backends.mkldnn.enabled
        assert torch.get_num_threads() == 1
        y = run(model, x)
    assert torch.get_num_threads() == threads
    assert bool(torch.backends.mkldnn.enabled) == before
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)


# --- ONNX ----------------------------------------------------------------------------------------------


def onnx_session(model: EmotionRNN, path: Path) -> ort.InferenceSession:
    with warnings.catch_warnings():
        # The legacy exporter's deprecation and batch-size notices; parity below is what matters.
        warnings.simplefilter("ignore")
        export_onnx(model, path, num_features=model.config.num_features)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_diff(session: ort.InferenceSession, model: EmotionRNN, x: torch.Tensor) -> float:
    (y_onnx,) = session.run(None, {"features": x.numpy()})
    return float(np.abs(np.asarray(y_onnx) - run(model, x).numpy()).max())


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(small("AT"), id="AT-2layer"),
        pytest.param(small("NAT"), id="NAT-2layer"),
        pytest.param(small("AT", hidden_sizes=(16,), num_outputs=1, dropout=0.3), id="AT-1layer-1out"),
        pytest.param(small("AT", output_feedback=False), id="AT-no-feedback"),
    ],
)
def test_onnx_matches_pytorch_for_any_batch_and_length(model: EmotionRNN, tmp_path: Path) -> None:
    session = onnx_session(model, tmp_path / "m.onnx")
    assert session.get_inputs()[0].shape == ["batch", "time", F_SMALL]
    w = model.config.attention_window
    # T = 1 (no past at all), T < W, T = W, T > W, and the paper's clip and longer.
    for t_len in (1, 2, w - 1, w, w + 1, 61, 300):
        for b in (1, 3):
            assert max_diff(session, model, feats(b, t_len, seed=t_len)) <= 1e-4, (t_len, b)


def test_onnx_full_size_lstm_at_400(tmp_path: Path) -> None:
    model = from_preset("LSTM_AT_400", seed=0).eval()
    start = time.perf_counter()
    session = onnx_session(model, tmp_path / "at400.onnx")
    x = feats(1, 61, 6373)
    assert max_diff(session, model, x) <= 1e-4
    assert time.perf_counter() - start < 60


# --- training inside an input subspace ------------------------------------------------------------------


def orthonormal(f: int, k: int, seed: int = 0) -> torch.Tensor:
    q: torch.Tensor = torch.linalg.qr(torch.randn(f, k, generator=torch.Generator().manual_seed(seed)))[0]
    return q


@pytest.mark.parametrize("kind", ["AT", "NAT"])
def test_subspace_input_folds_into_the_same_full_width_model(kind: str, tmp_path: Path) -> None:
    full = small(kind)
    basis = orthonormal(F_SMALL, 6)
    sub = SubspaceInput(full, basis).eval()
    # The start is the full model's own initialisation, restricted to the subspace.
    start, own = sub.inner.state_dict(), full.state_dict()
    torch.testing.assert_close(start["encoder.0.weight_ih_l0"], own["encoder.0.weight_ih_l0"] @ basis)
    with torch.no_grad():  # give the subspace weights something to carry beyond their start
        for p in sub.inner.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    folded = sub.fold()
    assert isinstance(folded, EmotionRNN)
    assert folded.config == full.config
    assert not folded.training
    x = feats(3, 40, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(run(folded, x), sub(x), atol=1e-5, rtol=0)
    # The folded input weights live in the span of the basis: what lies outside it changes nothing.
    w = folded.state_dict()["encoder.0.weight_ih_l0"]
    assert float((w - w @ basis @ basis.T).abs().max()) < 1e-5
    outside = torch.randn(3, 40, F_SMALL, generator=torch.Generator().manual_seed(8))
    outside = outside - outside @ basis @ basis.T
    torch.testing.assert_close(run(folded, x + 5 * outside), run(folded, x), atol=1e-5, rtol=0)
    # And it is an ordinary model: its ONNX graph matches it like any other.
    assert max_diff(onnx_session(folded, tmp_path / "folded.onnx"), folded, x) <= 1e-4


def test_subspace_input_refuses_a_basis_of_the_wrong_shape() -> None:
    for shape in ((F_SMALL + 1, 4), (F_SMALL, 0), (F_SMALL,)):
        with pytest.raises(ValueError, match="basis"):
            SubspaceInput(small(), torch.zeros(shape))


def test_window_covering_the_past_equals_unbounded_attention() -> None:
    # W >= T - 1 is the paper's full-past attention exactly; the window only changes longer sequences.
    bounded = small("AT", attention_window=5)
    unbounded = small("AT", attention_window=1000)
    unbounded.load_state_dict(bounded.state_dict())
    x = feats(2, 6)
    torch.testing.assert_close(run(bounded, x), run(unbounded, x), atol=1e-6, rtol=0)
    x = feats(2, 12)
    assert not torch.allclose(run(bounded, x)[:, 6:], run(unbounded, x)[:, 6:], atol=1e-6, rtol=0)


def test_a_folded_subspace_model_factorises_back_to_the_same_function() -> None:
    cfg = ModelConfig(num_features=40, hidden_sizes=(6,), attention_window=4, num_outputs=2)
    basis, _ = torch.linalg.qr(torch.randn(40, 5, generator=torch.Generator().manual_seed(0)))
    folded = SubspaceInput(build_model(cfg, seed=1), basis).fold().eval()
    again = SubspaceInput.factorise(folded, 5).eval()
    assert again.config == cfg
    assert tuple(again.basis.shape) == (40, 5)
    x = torch.randn(2, 30, 40)
    with torch.no_grad():
        torch.testing.assert_close(again(x), folded(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rank above 3"):
        SubspaceInput.factorise(folded, 3)
    with pytest.raises(ValueError, match="rank must be"):
        SubspaceInput.factorise(folded, 40)
