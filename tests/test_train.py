from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.contract import FeatureConfig, ModelContract
from model_export.evaluate import group_folds, metrics
from model_export.train import (
    Normaliser,
    TrainConfig,
    fit_statistics,
    make_batches,
    make_sequences,
    predict,
    train,
    validation_split,
)

F = 12


def _toy(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Clips whose targets are a lagged, squashed function of two input features."""
    rng = np.random.default_rng(seed)
    feats, targs = [], []
    for _ in range(n):
        t = int(rng.integers(20, 40))
        x = rng.standard_normal((t, F)).astype(np.float32)
        drive = np.convolve(x[:, 0], np.ones(3) / 3)[:t]  # arousal follows a 3-frame moving average
        lagged = np.concatenate([[0.0], x[:-1, 1]])  # valence follows feature 1 one frame late
        y = np.stack([np.tanh(drive), np.tanh(lagged)], axis=1).astype(np.float32)
        feats.append(x * 1000.0 + 50.0)  # raw scale far from standardised: the normaliser must handle it
        targs.append(y)
    return feats, targs


def _cfg(**kw: object) -> TrainConfig:
    base = {
        "preset": "LSTM_AT_400",
        "model_overrides": {"hidden_sizes": (16,), "attention_window": 5},
        "epochs": 40,
        "lr": 3e-3,
        "threads": 1,
        "feature_transform": "none",
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_statistics_stream_in_float64_and_guard_constant_features() -> None:
    a = (np.ones((5, 3)) * [1, 2, 7]).astype(np.float32)
    b = (np.ones((3, 3)) * [3, 2, 7]).astype(np.float32)
    mean, std = fit_statistics([a, b], "none")
    allx = np.concatenate([a, b]).astype(np.float64)
    np.testing.assert_allclose(mean, allx.mean(0), rtol=1e-6)
    assert std[0] == pytest.approx(allx[:, 0].std(), rel=1e-6)
    assert std[1] == 1.0  # constant feature: no division by zero
    assert std[2] == 1.0


def test_normaliser_matches_the_contract_reference() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 6373)) * 10.0 ** rng.integers(-3, 12, size=6373)).astype(np.float32)
    mean, std = fit_statistics([x], "signed_log1p")
    contract = ModelContract(
        features=FeatureConfig(),
        num_features=6373,
        feature_names_sha256="0" * 64,
        opensmile_version="2.6.0",
        norm_mean=mean,
        norm_std=std,
        clip_z=3.0,
    )
    ours = Normaliser(mean, std, "signed_log1p", 3.0)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, contract.normalise(x), atol=1e-5)
    assert np.abs(ours).max() <= 3.0


def test_group_splits_never_cut_a_group() -> None:
    groups = [f"g{i // 3}" for i in range(60)]
    folds = group_folds(groups, 10, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(60))
    for f in folds:
        assert {groups[i] for i in f}.isdisjoint({groups[i] for g in folds if g is not f for i in g})
    tr, va = validation_split(groups, 0.1, seed=0)
    assert {groups[i] for i in tr}.isdisjoint({groups[i] for i in va})
    assert len({groups[i] for i in va}) == 2
    with pytest.raises(ValueError, match="k="):
        group_folds(groups, 21)


def test_metrics_on_perfect_and_constant_predictions() -> None:
    rng = np.random.default_rng(0)
    ys = [rng.uniform(-1, 1, (30, 2)).astype(np.float32) for _ in range(4)]
    perfect = metrics(ys, ys, ("arousal", "valence"))
    assert perfect["arousal"]["r2"] == pytest.approx(1.0)
    assert perfect["valence"]["tau"] == pytest.approx(1.0)
    assert perfect["arousal"]["mae"] == 0.0
    mean = np.concatenate(ys).mean(0)
    flat = [np.tile(mean, (30, 1)).astype(np.float32) for _ in ys]
    m = metrics(flat, ys, ("arousal", "valence"))
    assert m["arousal"]["r2"] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(m["arousal"]["tau"])  # constant curves have no rank correlation


def test_training_learns_and_is_deterministic() -> None:
    feats, targs = _toy(100, 0)
    vf, vt = _toy(10, 1)
    a = train(_cfg(), feats, targs, vf, vt, progress=False)
    b = train(_cfg(), feats, targs, vf, vt, progress=False)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)
    assert a.history[a.best_epoch - 1]["val_mse"] < 0.5 * a.history[0]["val_mse"]
    tf, tt = _toy(10, 2)
    preds = predict(a.model, make_sequences(tf, tt, a.normaliser, ("arousal", "valence")))
    assert [p.shape for p in preds] == [t.shape for t in tt]
    assert metrics(preds, tt, ("arousal", "valence"))["arousal"]["r2"] > 0.5


def test_early_stopping_and_single_target_models() -> None:
    feats, targs = _toy(12, 0)
    vf, vt = _toy(4, 1)
    # A learning rate of 0 never improves: training stops after `patience` epochs past the first.
    res = train(_cfg(lr=0.0, patience=3, targets=("valence",)), feats, targs, vf, vt, progress=False)
    assert len(res.history) == 4
    assert res.best_epoch == 1
    assert res.model_config.num_outputs == 1
    preds = predict(res.model, make_sequences(vf, vt, res.normaliser, ("valence",)))
    assert preds[0].shape == (vt[0].shape[0], 1)


@pytest.mark.parametrize("batching", ["bucketed", "random"])
def test_batches_cover_every_sequence_once_and_change_each_epoch(batching: str) -> None:
    rng = np.random.default_rng(0)
    lengths = [int(v) for v in np.random.default_rng(1).integers(35, 800, size=183)]
    first = make_batches(lengths, 10, rng, batching)
    second = make_batches(lengths, 10, rng, batching)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(183))
        assert sorted(len(b) for b in batches) == [3] + [10] * 18
    assert first != second


def test_bucketed_batches_pad_far_less_than_random_ones() -> None:
    lengths = [int(v) for v in np.random.default_rng(1).integers(35, 800, size=200)]

    def padded(batching: str) -> float:
        rng = np.random.default_rng(0)
        batches = make_batches(lengths, 10, rng, batching)
        return sum(max(lengths[i] for i in b) * len(b) for b in batches) / sum(lengths)

    assert padded("bucketed") < 1.15
    assert padded("random") > 1.5
    with pytest.raises(ValueError, match="batching"):
        make_batches(lengths, 10, np.random.default_rng(0), "sorted")


def test_log1p_is_accurate_for_tiny_and_huge_values_in_torch_and_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    from model_export.train import _log1p

    u = np.concatenate([[0.0], np.logspace(-12, 38, 400)]).astype(np.float32)
    want = np.log1p(u.astype(np.float64))
    got = _log1p(torch.from_numpy(u)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-7 * 4, atol=0)

    class Front(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _log1p(x)

    path = tmp_path / "log1p.onnx"
    torch.onnx.export(Front(), (torch.from_numpy(u),), str(path), dynamo=False, input_names=["u"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"u": u})
    # Plain Log(1 + u) would give 0 for u < 6e-8: a relative error of 1.
    np.testing.assert_allclose(onnx_out, want, rtol=2e-7 * 4, atol=0)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_variants_stand_in_for_their_original_during_training() -> None:
    feats, targs = _toy(30, 0)
    vf, vt = _toy(5, 1)
    cfg = _cfg(epochs=4)
    plain = train(cfg, feats, targs, vf, vt, progress=False)
    # No variants, or variants identical to the originals, train exactly the run without them:
    # the renditions are drawn from a random stream of their own, and the batches do not change.
    none = train(cfg, feats, targs, vf, vt, progress=False, train_variants=[[] for _ in feats])
    assert _same_weights(plain.model, none.model)
    copies = train(cfg, feats, targs, vf, vt, progress=False, train_variants=[[f.copy()] for f in feats])
    assert _same_weights(plain.model, copies.model)
    # Time-reversed variants have the same frames, hence the same statistics, but other sequences:
    # training differs only because they are presented in place of the originals.
    reversed_ = [[f[::-1].copy()] for f in feats]
    flipped = train(cfg, feats, targs, vf, vt, progress=False, train_variants=reversed_)
    torch.testing.assert_close(flipped.normaliser.mean, plain.normaliser.mean)
    assert not _same_weights(plain.model, flipped.model)
    # Statistics cover the variants' frames too (the inputs training sees).
    scaled = [[(f * 3.0).astype(np.float32)] for f in feats]
    res = train(_cfg(epochs=1), feats, targs, vf, vt, progress=False, train_variants=scaled)
    expected, _ = fit_statistics([*feats, *(v[0] for v in scaled)], "none")
    np.testing.assert_allclose(res.normaliser.mean.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one"):
        train(cfg, feats, targs, vf, vt, progress=False, train_variants=[[]])
