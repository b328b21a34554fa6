from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from app.core.contract import FeatureConfig, ModelContract
from model_export import train as train_module
from model_export.evaluate import metrics
from model_export.model import EmotionRNN
from model_export.normaliser import Normaliser, fit_statistics
from model_export.splits import group_folds, validation_split
from model_export.train import (
    Supervision,
    TrainConfig,
    TrainSequence,
    _cropped,
    _pad,
    batch_loss,
    input_basis,
    make_batches,
    make_sequences,
    predict,
    train,
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


def test_signed_log1p_is_accurate_for_tiny_and_huge_values_in_torch_and_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    from model_export.normaliser import _signed_log1p

    u = np.concatenate([[0.0], np.logspace(-12, 38, 400)])
    x = np.concatenate([u, -u[1:]]).astype(np.float32)
    want = np.sign(x) * np.log1p(np.abs(x.astype(np.float64)))
    got = _signed_log1p(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-7 * 4, atol=0)

    class Front(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _signed_log1p(x)

    path = tmp_path / "log1p.onnx"
    torch.onnx.export(Front(), (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x})
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


def _seq(y: np.ndarray, clip: bool = False, confidence: float = 1.0) -> TrainSequence:
    t = torch.from_numpy(np.asarray(y, np.float32))
    return TrainSequence(torch.zeros(t.shape[0], 3), t, Supervision(clip, confidence))


def test_batch_loss_of_frame_labels_is_the_papers_masked_mse() -> None:
    rng = np.random.default_rng(0)
    seqs = [_seq(rng.uniform(-1, 1, (5, 2))), _seq(rng.uniform(-1, 1, (3, 2)))]
    _, y, mask = _pad(seqs)
    pred = torch.from_numpy(rng.uniform(-1, 1, y.shape).astype(np.float32))
    num, den = batch_loss(pred, y, mask, seqs, TrainConfig())
    expected = sum(float(((pred[i, : s.y.shape[0]] - s.y) ** 2).sum()) for i, s in enumerate(seqs)) / (8 * 2)
    assert float(num / den) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        # clip mean (0.2, -0.1) against 0.5 * signs (+1, -1): ((0.2 - 0.5)^2 + (-0.1 + 0.5)^2) / 2
        ("mean_mse", (0.09 + 0.16) / 2),
        # only the shortfall below the margin costs: max(0, 0.5 - 0.2)^2 and max(0, 0.5 - 0.1)^2
        ("hinge", (0.09 + 0.16) / 2),
        # the static target on every frame: frames (0.4, 0.0) and (0.0, -0.2)
        ("frame_mse", ((0.1**2 + 0.5**2) + (0.5**2 + 0.3**2)) / 4),
    ],
)
def test_clip_losses_by_hand(loss: str, expected: float) -> None:
    seqs = [_seq(np.tile([1.0, -1.0], (2, 1)), clip=True)]
    _, y, mask = _pad(seqs)
    pred = torch.tensor([[[0.4, 0.0], [0.0, -0.2]]])
    num, den = batch_loss(pred, y, mask, seqs, TrainConfig(clip_loss=loss, clip_target=0.5))
    assert float(num / den) == pytest.approx(expected, rel=1e-5)


def test_hinge_ignores_clips_beyond_the_margin_and_weights_scale_clip_frames() -> None:
    clip = _seq(np.tile([1.0, -1.0], (4, 1)), clip=True, confidence=0.5)
    frame = _seq(np.zeros((2, 2)))
    _, y, mask = _pad([clip, frame])
    pred = torch.zeros_like(y)
    pred[0, :4] = torch.tensor([0.9, -0.8])  # far on the right side of both margins
    num, _ = batch_loss(pred, y, mask, [clip, frame], TrainConfig(clip_loss="hinge"))
    assert float(num) == 0.0
    pred[0, :4] = 0.0  # clip mean 0: mean_mse (0 - 0.5)^2 per output
    base = TrainConfig(clip_loss="mean_mse")
    num1, den = batch_loss(pred, y, mask, [clip, frame], base)
    assert float(den) == 6 * 2  # every real frame of both clips, per output
    assert float(num1) == pytest.approx(0.25 * 4 * 2)  # a clip counts like its 4 frames
    num3, _ = batch_loss(pred, y, mask, [clip, frame], TrainConfig(clip_weight=3.0))
    assert float(num3) == pytest.approx(3 * float(num1))
    half, _ = batch_loss(pred, y, mask, [clip, frame], TrainConfig(clip_confidence=True))
    assert float(half) == pytest.approx(0.5 * float(num1))


def test_frame_supervision_trains_exactly_as_without_and_clip_labels_move_the_clip_mean() -> None:
    feats, targs = _toy(24, 0)
    vf, vt = _toy(4, 1)
    cfg = _cfg(epochs=3)
    plain = train(cfg, feats, targs, vf, vt, progress=False)
    frames = [Supervision()] * len(feats)
    same = train(
        cfg, feats, targs, vf, vt, progress=False, train_supervision=frames, val_supervision=frames[:4]
    )
    assert _same_weights(plain.model, same.model)
    # Clip-labelled clips whose quadrant is carried by feature 0's level: the clip means must follow.
    rng = np.random.default_rng(2)
    signs = rng.choice([-1.0, 1.0], size=32)
    xs = [
        rng.standard_normal((30, F)).astype(np.float32) + np.float32(s) * np.eye(F, dtype=np.float32)[0]
        for s in signs
    ]
    ys = [np.tile(np.array([s, -s], dtype=np.float32), (30, 1)) for s in signs]
    clip = [Supervision(clip_level=True)] * 32
    res = train(
        _cfg(epochs=15),
        xs[:24],
        ys[:24],
        xs[24:],
        ys[24:],
        progress=False,
        train_supervision=clip[:24],
        val_supervision=clip[24:],
    )
    preds = predict(res.model, make_sequences(xs, ys, res.normaliser, ("arousal", "valence")))
    means = np.array([p.mean(axis=0) for p in preds])
    assert np.mean(np.sign(means[:, 0]) == signs) >= 0.9
    assert np.mean(np.sign(means[:, 1]) == -signs) >= 0.9
    assert np.abs(means).mean() == pytest.approx(0.5, abs=0.25)  # near the target level, not at +-1


def test_unknown_clip_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="clip_loss"):
        TrainConfig(clip_loss="mae")
    with pytest.raises(ValueError, match="clip_target"):
        TrainConfig(clip_target=0.0)
    with pytest.raises(ValueError, match="clip_teacher_probe"):
        TrainConfig(clip_teacher=0.5, clip_teacher_probe="forest")


def test_domain_statistics_standardise_each_kind_with_its_own_and_serve_the_clip_labelled_ones() -> None:
    feats, targs = _toy(12, 0)
    other = [(f * 0.01 - 7.0).astype(np.float32) for f in feats[:6]]  # another "domain": other scale
    signs = [np.sign(t) + (t == 0) for t in targs[:6]]
    kinds = [Supervision()] * 12 + [Supervision(clip_level=True)] * 6
    cfg = _cfg(epochs=1, domain_statistics=True)
    res = train(cfg, [*feats, *other], [*targs, *signs], [], [], progress=False, train_supervision=kinds)
    clip_mean, _ = fit_statistics(other, "none")
    np.testing.assert_allclose(res.normaliser.mean.numpy(), clip_mean, rtol=1e-6)
    shared = train(
        _cfg(epochs=1), [*feats, *other], [*targs, *signs], [], [], progress=False, train_supervision=kinds
    )
    both, _ = fit_statistics([*feats, *other], "none")
    np.testing.assert_allclose(shared.normaliser.mean.numpy(), both, rtol=1e-6)
    assert not _same_weights(res.model, shared.model)


def test_clip_crops_are_random_spans_of_clip_labelled_clips_only() -> None:
    rng = np.random.default_rng(0)
    clip = _seq(np.tile([1.0, -1.0], (60, 1)), clip=True)
    frame = _seq(rng.uniform(-1, 1, (60, 2)))
    seen = set()
    for _ in range(30):
        cut, whole = _cropped([clip, frame], 20, rng)
        assert whole is frame
        assert 20 <= cut.x.shape[0] <= 60
        assert cut.supervision.clip_level
        seen.add(cut.x.shape[0])
    assert len(seen) > 5  # lengths (and starts) change from epoch to epoch
    feats, targs = _toy(8, 0)
    kinds = [Supervision(clip_level=True)] * 8
    signs = [np.sign(t) + (t == 0) for t in targs]
    a = train(
        _cfg(epochs=2, clip_crop_frames=10), feats, signs, [], [], progress=False, train_supervision=kinds
    )
    b = train(
        _cfg(epochs=2, clip_crop_frames=10), feats, signs, [], [], progress=False, train_supervision=kinds
    )
    assert _same_weights(a.model, b.model)  # seeded
    c = train(_cfg(epochs=2), feats, signs, [], [], progress=False, train_supervision=kinds)
    assert not _same_weights(a.model, c.model)


def test_input_noise_is_seeded_and_changes_training() -> None:
    feats, targs = _toy(8, 0)
    vf, vt = _toy(2, 1)
    a = train(_cfg(epochs=2, input_noise=0.5), feats, targs, vf, vt, progress=False)
    b = train(_cfg(epochs=2, input_noise=0.5), feats, targs, vf, vt, progress=False)
    c = train(_cfg(epochs=2), feats, targs, vf, vt, progress=False)
    assert _same_weights(a.model, b.model)
    assert not _same_weights(a.model, c.model)


def test_weight_average_is_the_ema_of_the_unchanged_trajectory_at_the_best_epoch() -> None:
    feats, targs = _toy(6, 0)
    vf, vt = _toy(3, 1)
    snapshots: list[list[torch.Tensor]] = []

    def record(optimiser: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        snapshots.append([p.detach().clone() for g in optimiser.param_groups for p in g["params"]])

    def run(**kw: object) -> tuple[torch.nn.Module, int, list[list[torch.Tensor]]]:
        snapshots.clear()
        handle = register_optimizer_step_post_hook(record)
        try:
            res = train(_cfg(epochs=6, batch_size=2, **kw), feats, targs, vf, vt, progress=False)
        finally:
            handle.remove()
        return res.model, res.best_epoch, list(snapshots)

    plain, _, raw = run()
    decay = 0.8
    averaged, best_epoch, raw_averaged = run(weight_average=decay)
    # Averaging only watches: the optimiser's steps are exactly those of the plain run.
    assert len(raw) >= len(raw_averaged) > 0
    for a, b in zip(raw, raw_averaged, strict=False):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # The returned weights are the EMA (first step copied) after the best epoch's last step.
    steps = best_epoch * 3  # 6 training clips, 2 per update
    ema = [p.clone() for p in raw_averaged[0]]
    for snap in raw_averaged[1:steps]:
        for e, p in zip(ema, snap, strict=True):
            e.mul_(decay).add_(p, alpha=1 - decay)
    for e, p in zip(ema, averaged.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-6)
    assert not _same_weights(plain, averaged)
    with pytest.raises(ValueError, match="weight_average"):
        _cfg(weight_average=1.0)


def _low_rank_frames(f: int, k: int, n_seqs: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sequences whose frames vary mostly inside a known k-dim subspace (plus a little isotropic noise)."""
    gen = torch.Generator().manual_seed(seed)
    span, _ = torch.linalg.qr(torch.randn(f, k, generator=gen))
    scales = torch.linspace(10.0, 5.0, k)
    seqs = [
        (torch.randn(t, k, generator=gen) * scales) @ span.T + 0.1 * torch.randn(t, f, generator=gen) + 3.0
        for t in torch.randint(20, 60, (n_seqs,), generator=gen).tolist()
    ]
    return seqs, span


def _captured(basis: torch.Tensor, span: torch.Tensor) -> float:
    """Smallest cosine between the span and the basis: 1 when the basis contains the span."""
    return float(torch.linalg.svdvals(basis.T @ span).min())


@pytest.mark.parametrize(("f", "rank"), [(12, 3), (200, 3)])  # the exact and the randomised SVD
def test_input_basis_spans_the_leading_principal_directions(f: int, rank: int) -> None:
    seqs, span = _low_rank_frames(f, rank, 20, seed=f)
    basis = input_basis(seqs, rank, seed=1)
    assert basis.shape == (f, rank)
    assert basis.dtype == torch.float32
    torch.testing.assert_close(basis.T @ basis, torch.eye(rank), atol=1e-5, rtol=0)
    assert _captured(basis, span) > 0.99
    assert torch.equal(input_basis(seqs, rank, seed=1), basis)  # seeded: runs repeat
    with pytest.raises(ValueError, match="input_rank"):
        input_basis(seqs, f + 1)
    with pytest.raises(ValueError, match="input_rank"):
        input_basis(seqs, 0)


def test_input_basis_strides_through_long_training_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    seqs, span = _low_rank_frames(40, 2, 30, seed=5)
    seen: list[int] = []
    real_svd = torch.linalg.svd

    def recording(x: torch.Tensor, **kw: object) -> object:
        seen.append(int(x.shape[0]))
        return real_svd(x, **kw)

    monkeypatch.setattr(train_module, "BASIS_FRAMES", 200)
    monkeypatch.setattr(torch.linalg, "svd", recording)
    basis = input_basis(seqs, 15)  # 2 x (15 + 10) >= 40 inputs: the exact SVD, of the frames used
    total = sum(s.shape[0] for s in seqs)
    assert seen
    assert 100 <= seen[0] <= 200 + len(seqs) < total  # every s-th frame of every sequence
    assert _captured(basis, span) > 0.99


def test_input_rank_trains_inside_a_subspace_and_returns_the_full_width_model() -> None:
    feats, targs = _toy(30, 0)
    vf, vt = _toy(5, 1)
    a = train(_cfg(epochs=4, input_rank=4), feats, targs, vf, vt, progress=False)
    b = train(_cfg(epochs=4, input_rank=4), feats, targs, vf, vt, progress=False)
    plain = train(_cfg(epochs=4), feats, targs, vf, vt, progress=False)
    assert isinstance(a.model, EmotionRNN)
    assert a.model.config == plain.model.config  # the same model and graph, F inputs wide
    assert not a.model.training
    assert _same_weights(a.model, b.model)
    assert not _same_weights(a.model, plain.model)
    # The input weights have rank 4: the model only hears 4 directions of its 12 inputs.
    singular = torch.linalg.svdvals(a.model.state_dict()["encoder.0.weight_ih_l0"])
    assert float(singular[3]) > 1e-3
    assert float(singular[4]) < 1e-5 * float(singular[0])
    preds = predict(a.model, make_sequences(vf, vt, a.normaliser, ("arousal", "valence")))
    assert [p.shape for p in preds] == [t.shape for t in vt]
    with pytest.raises(ValueError, match="input_rank"):
        _cfg(input_rank=-1)
    with pytest.raises(ValueError, match="input_rank"):
        train(_cfg(epochs=1, input_rank=F + 1), feats, targs, vf, vt, progress=False)


def test_a_config_comes_back_from_its_dict_and_older_dicts_take_the_new_defaults() -> None:
    cfg = TrainConfig(targets=("arousal",), lr_choices=(3e-4, 1e-3), input_rank=64, weight_average=0.99)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    older = {k: v for k, v in cfg.to_dict().items() if k != "input_rank"}  # written before the field existed
    assert TrainConfig.from_dict(older).input_rank == 0
    with pytest.raises(ValueError, match="not TrainConfig fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 0.1})
