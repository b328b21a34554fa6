from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.core.contract import transform_features
from model_export.baseline import (
    clip_probe_cv,
    clip_probe_decisions,
    rbf_kernel,
    ridge_cv,
    teacher_levels,
)
from model_export.datasets.base import Clip
from model_export.splits import group_folds

F = 15


def _data(n_clips: int = 12) -> tuple[list[Clip], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((F, 2)) * 0.1
    clips, feats = [], {}
    for i in range(n_clips):
        t = int(rng.integers(5, 30))
        # Raw features spanning magnitudes, like ComParE's (the transform compresses them).
        x = (rng.standard_normal((t, F)) * np.logspace(-2, 4, F)).astype(np.float32)
        y = np.tanh(
            transform_features(x.astype(np.float64), "signed_log1p") @ w + 0.05 * rng.standard_normal((t, 2))
        )
        clips.append(Clip(f"c{i}", Path(f"/nonexistent/{i}.wav"), y.astype(np.float32), group=f"g{i // 2}"))
        feats[f"c{i}"] = x
    return clips, feats


def _naive_fold_predictions(
    clips: list[Clip], feats: dict[str, np.ndarray], lam: float
) -> dict[str, np.ndarray]:
    folds = group_folds([c.group for c in clips], 3, 0)
    out = {}
    for fold in folds:
        train = [c for i, c in enumerate(clips) if i not in fold]
        x = np.concatenate(
            [transform_features(feats[c.clip_id].astype(np.float64), "signed_log1p") for c in train]
        )
        y = np.concatenate([c.targets.astype(np.float64) for c in train])
        mean, std = x.mean(axis=0), x.std(axis=0)
        z = (x - mean) / std
        w = np.linalg.solve(z.T @ z + lam * np.eye(F), z.T @ (y - y.mean(axis=0)))
        for i in fold:
            zt = (transform_features(feats[clips[i].clip_id].astype(np.float64), "signed_log1p") - mean) / std
            out[clips[i].clip_id] = np.clip(zt @ w + y.mean(axis=0), -1, 1)
    return out


def test_sufficient_statistics_reproduce_a_naive_per_fold_ridge() -> None:
    clips, feats = _data()
    result, full = ridge_cv(clips, feats, k=3, lam=2.0)
    naive = _naive_fold_predictions(clips, feats, lam=2.0)
    assert sorted(result.clip_ids) == sorted(naive)
    for cid, pred in zip(result.clip_ids, result.predictions, strict=True):
        np.testing.assert_allclose(pred, naive[cid], atol=2e-4)
    assert result.folds_run == result.folds_total == 3
    assert result.scores()["arousal"]["r2"] > 0.5  # the targets are a noisy linear map: learnable
    assert full.predict(feats["c0"]).shape == (feats["c0"].shape[0], 2)


def test_large_penalty_predicts_the_training_mean() -> None:
    clips, feats = _data()
    result, _ = ridge_cv(clips, feats, k=3, lam=1e12)
    assert result.scores()["valence"]["r2"] == pytest.approx(0.0, abs=0.1)


def test_augmented_variants_do_not_enter_the_baseline() -> None:
    clips, feats = _data()
    plain, _ = ridge_cv(clips, feats, k=3, lam=2.0)
    variants = [
        Clip(f"{c.clip_id} ~aug1", c.audio_path, c.targets, group=c.group, variant_of=c.clip_id)
        for c in clips
    ]
    noisy = dict(feats, **{v.clip_id: feats[v.variant_of] * 5.0 for v in variants})
    with_variants, _ = ridge_cv([*clips, *variants], noisy, k=3, lam=2.0)
    assert with_variants.clip_ids == plain.clip_ids
    for a, b in zip(with_variants.predictions, plain.predictions, strict=True):
        np.testing.assert_array_equal(a, b)


def _clip_labelled(n_clips: int = 80) -> tuple[list[Clip], dict[str, np.ndarray]]:
    """Clip-labelled clips whose signs follow the mean of two feature columns (one per output)."""
    rng = np.random.default_rng(1)
    clips, feats = [], {}
    for i in range(n_clips):
        offset = rng.standard_normal(F) * np.where(np.arange(F) < 2, 3.0, 0.3)
        x = (rng.standard_normal((20, F)) + offset).astype(np.float32)
        signs = np.where(x[:, :2].mean(axis=0) >= 0, 1.0, -1.0).astype(np.float32)
        clips.append(_clip(f"q{i}", signs, 20, group=f"a{i // 2}"))
        feats[f"q{i}"] = x
    return clips, feats


def _clip(clip_id: str, signs: np.ndarray, frames: int, group: str) -> Clip:
    """A clip-labelled clip: one static sign per output on every frame."""
    return Clip(
        clip_id,
        Path(f"/nonexistent/{clip_id}.mp3"),
        np.tile(signs, (frames, 1)),
        group=group,
        label_kind="clip",
    )


def test_probe_scores_are_tanh_of_out_of_fold_decisions_that_ignore_their_own_label() -> None:
    clips, feats = _clip_labelled()
    ids, decisions = clip_probe_decisions(clips, feats, k=4)
    ids2, scores = clip_probe_cv(clips, feats, k=4)
    assert ids == ids2 == [c.clip_id for c in clips]
    np.testing.assert_allclose(scores, np.tanh(decisions), atol=1e-6)
    signs = np.stack([c.targets[0] for c in clips])
    assert np.mean(np.sign(decisions) == signs) > 0.75  # the labels are a linear function of the features
    # Cross-fitted: flipping one clip's label moves every fold's model but the one that scores that clip.
    flipped = [replace(c, targets=-c.targets) if c.clip_id == "q0" else c for c in clips]
    _, again = clip_probe_decisions(flipped, feats, k=4)
    np.testing.assert_allclose(again[0], decisions[0], rtol=1e-6, atol=1e-9)
    assert not np.allclose(again[1:], decisions[1:])


def test_teacher_levels_are_graded_and_keep_the_probe_order() -> None:
    clips, feats = _clip_labelled()
    levels = teacher_levels(clips, feats, k=4)
    _, decisions = clip_probe_decisions(clips, feats, k=4)
    u = np.stack([levels[c.clip_id] for c in clips])
    assert np.all(np.abs(u) < 1.0)
    for d in range(2):
        assert np.array_equal(np.argsort(u[:, d], kind="stable"), np.argsort(decisions[:, d], kind="stable"))
        # Not saturated: the spread of the decisions is one unit, so many clips sit well inside (-1, 1).
        assert np.median(np.abs(u[:, d])) < 0.95


def _radial(n_clips: int = 120) -> tuple[list[Clip], dict[str, np.ndarray]]:
    """Clips of four columns whose arousal sign says whether the clip lies far from the centre of the
    first two (a ring: no line can tell) and whose valence sign is linear in the third.

    Every frame of a clip is the same, so the frame std (which the signed-log1p compression would make
    a function of the distance from zero) carries nothing: the linear probe sees only the means.
    """
    rng = np.random.default_rng(5)
    clips, feats = [], {}
    for i in range(n_clips):
        x = np.tile(rng.standard_normal(4) * 2.0, (10, 1)).astype(np.float32)
        radius = float(np.linalg.norm(x[0, :2]))
        signs = np.array([1.0 if radius > 2.4 else -1.0, 1.0 if x[0, 2] >= 0 else -1.0], np.float32)
        clips.append(_clip(f"r{i}", signs, 10, group=f"a{i // 3}"))
        feats[f"r{i}"] = x
    return clips, feats


def test_rbf_kernel_is_the_gaussian_of_pairwise_distances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((4, 7))
    naive = np.array([[np.exp(-0.3 * np.sum((x - y) ** 2)) for y in b] for x in a])
    np.testing.assert_allclose(rbf_kernel(a, b, 0.3), naive, rtol=1e-10)
    np.testing.assert_allclose(np.diag(rbf_kernel(a, a, 0.3)), 1.0)


def test_the_rbf_svm_probe_finds_a_boundary_the_linear_probe_cannot() -> None:
    clips, feats = _radial()
    signs = np.stack([c.targets[0] for c in clips])
    _, linear = clip_probe_decisions(clips, feats, k=4)
    ids, svm = clip_probe_decisions(clips, feats, k=4, probe="rbf_svm")
    assert ids == [c.clip_id for c in clips]
    lin_acc, svm_acc = (
        [float(np.mean(np.sign(d[:, j]) == signs[:, j])) for j in range(2)] for d in (linear, svm)
    )
    assert lin_acc[0] < 0.7 < 0.85 < svm_acc[0]  # a ring: out of reach of any line through the clip means
    assert svm_acc[1] > 0.9  # and it still finds a linear label
    _, scores = clip_probe_cv(clips, feats, k=4, probe="rbf_svm")
    np.testing.assert_allclose(scores, np.tanh(svm), atol=1e-6)


def test_the_rbf_svm_probe_is_cross_fitted() -> None:
    clips, feats = _radial(60)
    _, decisions = clip_probe_decisions(clips, feats, k=4, probe="rbf_svm")
    flipped = [replace(c, targets=-c.targets) if c.clip_id == "r0" else c for c in clips]
    _, again = clip_probe_decisions(flipped, feats, k=4, probe="rbf_svm")
    np.testing.assert_allclose(again[0], decisions[0], rtol=1e-9, atol=1e-12)  # its own label: unseen
    assert not np.allclose(again[1:], decisions[1:])


def test_an_rbf_svm_teacher_keeps_its_probe_order() -> None:
    clips, feats = _radial(60)
    levels = teacher_levels(clips, feats, k=4, probe="rbf_svm")
    _, decisions = clip_probe_decisions(clips, feats, k=4, probe="rbf_svm")
    u = np.stack([levels[c.clip_id] for c in clips])
    assert np.all(np.abs(u) < 1.0)
    for d in range(2):
        assert np.array_equal(np.argsort(u[:, d], kind="stable"), np.argsort(decisions[:, d], kind="stable"))


def test_an_unknown_probe_is_refused() -> None:
    clips, feats = _radial(12)
    with pytest.raises(ValueError, match="probe must be one of"):
        clip_probe_decisions(clips, feats, k=4, probe="forest")
