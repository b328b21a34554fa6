from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.contract import transform_features
from model_export.baseline import ridge_cv
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
