"""Linear baselines: a per-frame ridge regression (VGMIDI) and a clip-level logistic probe (4Q).

The ridge map is cross-validated with the same folds and metrics as the RNNs; the probe
(:func:`clip_probe_cv`) with the joint protocol's folds over the clip-labelled dataset.

``../shared/data/vgmidi/ABOUT.md`` reports a ridge baseline (R² 0.46 arousal / 0.02 valence, 16 kHz);
this module reproduces that kind of number inside the project so that a report row says what the
recurrent models add over a linear map of one frame's features, and so that feature-path changes
(e.g. the input level policy) can be compared in minutes instead of CPU hours.

Features are compressed with the contract's transform and standardised with the statistics of each
fold's training part (no clipping: the fold's solution is then exact from sufficient statistics).
The cost is dominated by one pass of Gram matrices over all frames: every fold's ``X^T X`` is
accumulated once, and a fold's training Gram is the sum of the other folds'.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from app.core.audio import decode
from app.core.contract import OUTPUTS, transform_features
from app.core.features import FeatureExtractor
from app.core.types import Float64Array, FloatArray
from model_export.clip_metrics import clip_scores, scores_by_confidence
from model_export.datasets.base import Clip, originals
from model_export.evaluate import CVResult
from model_export.splits import group_folds
from model_export.train import CLIP_TEACHERS, TrainConfig


@dataclass(frozen=True)
class RidgeModel:
    """A fitted ridge map: ``((transform(x) - mean) / std) @ weights + bias``, clipped to [-1, 1]."""

    mean: Float64Array
    std: Float64Array
    weights: Float64Array
    bias: Float64Array
    transform: str

    def predict(self, features: FloatArray) -> FloatArray:
        """Per-frame predictions ``(T, 2)`` for raw ``(T, F)`` features."""
        z = (transform_features(features.astype(np.float64), self.transform) - self.mean) / self.std
        return np.clip(z @ self.weights + self.bias, -1.0, 1.0).astype(np.float32)


_Stats = tuple[Float64Array, Float64Array, Float64Array, Float64Array, int]


def _solve(parts: Sequence[_Stats], centre: Float64Array, lam: float, transform: str) -> RidgeModel:
    gram = np.sum([p[0] for p in parts], axis=0)
    s, xty = np.sum([p[1] for p in parts], axis=0), np.sum([p[2] for p in parts], axis=0)
    ysum, n = np.sum([p[3] for p in parts], axis=0), sum(p[4] for p in parts)
    mean, ybar = s / n, ysum / n
    scatter = gram - n * np.outer(mean, mean)
    std = np.sqrt(np.maximum(np.diag(scatter) / n, 0.0))
    std[std < 1e-8] = 1.0
    zz = scatter / np.outer(std, std)
    zy = (xty - n * np.outer(mean, ybar)) / std[:, None]
    weights = np.linalg.solve(zz + lam * np.eye(zz.shape[0]), zy)
    return RidgeModel(centre + mean, std, weights, ybar, transform)


def ridge_cv(
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    *,
    k: int = 10,
    lam: float = 1e3,
    transform: str = "signed_log1p",
    fold_seed: int = 0,
) -> tuple[CVResult, RidgeModel]:
    """k-fold ridge regression by piece, predictions pooled as for the RNNs.

    Args:
        clips: Labelled clips (those without features are skipped).
        features: Raw features by clip id.
        k: Folds (the same assignment as ``cross_validate`` with the same seed).
        lam: Ridge penalty on standardised features.
        transform: Feature compression before standardisation.
        fold_seed: Seed of the fold assignment.

    Returns:
        A :class:`CVResult` named ``Ridge (λ=…)`` with every fold run, and the model fitted on all clips.
    """
    started = time.perf_counter()
    # Augmented variants are a training device of the RNNs; the baseline fits the originals only.
    usable = [c for c in originals(clips) if c.clip_id in features]
    folds = group_folds([c.group for c in usable], k, fold_seed)
    xs, ys = [], []
    for c in usable:
        n = min(features[c.clip_id].shape[0], c.targets.shape[0])
        xs.append(transform_features(features[c.clip_id][:n].astype(np.float32), transform))
        ys.append(c.targets[:n].astype(np.float64))
    width = xs[0].shape[1]
    # Centre on the global mean first so that float32 Gram products keep their precision.
    centre = np.sum([x.sum(axis=0, dtype=np.float64) for x in xs], axis=0) / sum(x.shape[0] for x in xs)
    centre32 = centre.astype(np.float32)
    stats: list[_Stats] = []
    for fold in folds:
        gram = np.zeros((width, width), dtype=np.float64)
        s, xty = np.zeros(width), np.zeros((width, len(OUTPUTS)))
        ysum, n = np.zeros(len(OUTPUTS)), 0
        for i in fold:
            xc = xs[i] - centre32
            gram += xc.T @ xc
            s += xc.sum(axis=0, dtype=np.float64)
            xty += xc.T.astype(np.float64) @ ys[i]
            ysum += ys[i].sum(axis=0)
            n += xc.shape[0]
        stats.append((gram, s, xty, ysum, n))
    ids, preds, trues = [], [], []
    for f, fold in enumerate(folds):
        model = _solve([stats[j] for j in range(k) if j != f], centre, lam, transform)
        for i in fold:
            preds.append(model.predict(features[usable[i].clip_id][: ys[i].shape[0]]))
            trues.append(ys[i].astype(np.float32))
            ids.append(usable[i].clip_id)
    result = CVResult(
        name=f"Ridge (λ={lam:g})",
        config=TrainConfig(preset="ridge", feature_transform=transform),
        clip_ids=ids,
        predictions=preds,
        targets=trues,
        folds_run=k,
        folds_total=k,
        seconds=time.perf_counter() - started,
        epochs=[],
    )
    return result, _solve(stats, centre, lam, transform)


#: Input levels of :func:`level_sensitivity`, dBFS RMS.
SENSITIVITY_LEVELS_DBFS = (-30.0, -20.0, -10.0)


def level_sensitivity(model: RidgeModel, clip: Clip, extractor: FeatureExtractor) -> dict[str, Any]:
    """How much the ridge map's predictions move when one clip is played at other levels.

    The clip's audio is scaled to each of :data:`SENSITIVITY_LEVELS_DBFS` (RMS) and run through the
    same feature path; with the ``gated-rms`` level policy the predictions barely move.

    Returns:
        ``{"clip": id, "mean_abs_change_arousal_valence": {"-30 vs -20 dBFS": [dA, dV], ...}}``.
    """
    audio = decode(clip.audio_path, extractor.config.sample_rate)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    preds = {}
    for dbfs in SENSITIVITY_LEVELS_DBFS:
        scaled = (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)
        preds[dbfs] = model.predict(extractor.extract(scaled).values)
    low, mid, high = SENSITIVITY_LEVELS_DBFS
    shift = {
        f"{a:g} vs {b:g} dBFS": np.mean(np.abs(preds[a] - preds[b]), axis=0).round(4).tolist()
        for a, b in ((low, mid), (mid, high), (low, high))
    }
    return {"clip": clip.clip_id, "mean_abs_change_arousal_valence": shift}


def clip_summary_features(features: FloatArray, transform: str) -> Float64Array:
    """One clip's mean and standard deviation over frames of its compressed features, ``(2 F,)``."""
    x = transform_features(features.astype(np.float64), transform)
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


def _logistic(x: Float64Array, y: Float64Array, lam: float, max_iter: int) -> Float64Array:
    """L2-penalised logistic regression (labels ±1, bias unpenalised) by L-BFGS; weights then bias."""
    n = x.shape[0]

    def loss(w: Float64Array) -> tuple[float, Float64Array]:
        z = x @ w[:-1] + w[-1]
        g = -y / (1.0 + np.exp(y * z))
        value = float(np.logaddexp(0.0, -y * z).mean() + 0.5 * lam * (w[:-1] @ w[:-1]))
        return value, np.concatenate([x.T @ g / n + lam * w[:-1], [g.mean()]])

    result = minimize(
        loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iter}
    )
    return np.asarray(result.x)


#: The clip-level probes: a linear map (L2 logistic regression) and an RBF-kernel SVM, both on a clip's
#: standardised feature mean and std. The SVM is the stronger one on 4Q's valence (docs/results.md).
PROBES = CLIP_TEACHERS

#: The RBF-SVM's penalty. On 4Q's five folds every C from 3 to 30 gave the same scores (the clips are
#: separable in 12 746 dimensions, so the soft margin barely binds), and a grouped inner CV in each fold
#: chose 1 or 3 with the same outcome (docs/results.md, "An RBF-kernel SVM probe").
SVM_C = 10.0


def rbf_kernel(a: Float64Array, b: Float64Array, gamma: float) -> Float64Array:
    """``exp(-gamma |a_i - b_j|^2)`` for all rows of ``a`` and ``b`` (one matrix product)."""
    sq = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.asarray(np.exp(-gamma * np.maximum(sq, 0.0)))


def _svm_decisions(
    z_train: Float64Array, y_train: Float64Array, z_test: Float64Array, c: float
) -> Float64Array:
    """Decision values of one RBF-kernel SVM per output column of ``y_train`` (labels ±1).

    ``gamma`` is ``1 / (width × variance)`` of the standardised training inputs (scikit-learn's
    ``"scale"``); the kernel is computed here with one matrix product, as libsvm's own kernel loops
    took minutes instead of seconds for 4Q's five folds of 12 746 inputs (measured under load).
    """
    from sklearn.svm import SVC

    gamma = 1.0 / (z_train.shape[1] * max(float(z_train.var()), 1e-12))
    k_train, k_test = rbf_kernel(z_train, z_train, gamma), rbf_kernel(z_test, z_train, gamma)
    out = np.zeros((z_test.shape[0], y_train.shape[1]))
    for d in range(y_train.shape[1]):
        svm = SVC(C=c, kernel="precomputed").fit(k_train, y_train[:, d])
        out[:, d] = svm.decision_function(k_test)
    return out


def clip_probe_decisions(
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    k: int = 5,
    lam: float = 0.1,
    transform: str = "signed_log1p",
    fold_seed: int = 0,
    max_iter: int = 300,
    probe: str = "logistic",
    svm_c: float = SVM_C,
) -> tuple[list[str], Float64Array]:
    """Out-of-fold decision values of a clip-level probe (:func:`clip_probe_cv`), one column per output.

    Each clip's decisions come from the probe fitted on the other folds (grouped as the joint CV's
    folds), standardised with their statistics; a clip never informs its own decision.

    Args:
        clips: Clip-labelled clips (the signs of their targets are the labels).
        features: Raw features by clip id; clips without features are skipped.
        k: Folds.
        lam: The logistic probe's L2 penalty (on the mean loss).
        transform: Feature compression before the clip statistics.
        fold_seed: Seed of the fold assignment.
        max_iter: The logistic probe's L-BFGS iterations.
        probe: One of :data:`PROBES`.
        svm_c: The RBF-SVM's penalty.

    Returns:
        Clip ids and ``(N, 2)`` raw decisions (logits, or the SVM's margins): signs are the predicted signs.
    """
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, not {probe!r}")
    usable = [c for c in clips if c.clip_id in features]
    x = np.stack([clip_summary_features(features[c.clip_id], transform) for c in usable])
    signs = np.stack([np.sign(c.targets[0]) for c in usable]).astype(np.float64)
    decisions = np.zeros_like(signs)
    for test in group_folds([c.group for c in usable], k, fold_seed):
        train_idx = np.setdiff1d(np.arange(len(usable)), test)
        mean, std = x[train_idx].mean(axis=0), x[train_idx].std(axis=0)
        std[std < 1e-12] = 1.0
        z = (x - mean) / std
        if probe == "rbf_svm":
            decisions[test] = _svm_decisions(z[train_idx], signs[train_idx], z[test], svm_c)
            continue
        for d in range(signs.shape[1]):
            w = _logistic(z[train_idx], signs[train_idx, d], lam, max_iter)
            decisions[test, d] = z[test] @ w[:-1] + w[-1]
    return [c.clip_id for c in usable], decisions


def clip_probe_cv(
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    k: int = 5,
    lam: float = 0.1,
    transform: str = "signed_log1p",
    fold_seed: int = 0,
    max_iter: int = 300,
    probe: str = "logistic",
) -> tuple[list[str], FloatArray]:
    """A probe of clip-level labels: a classifier on a clip's feature mean and std (:data:`PROBES`).

    One model per output, trained on the other folds (grouped as the joint CV's folds: the same
    :func:`~model_export.splits.group_folds` assignment), standardised with their statistics. What a
    linear map (``"logistic"``, L2 logistic regression) or an RBF-kernel SVM (``"rbf_svm"``) of
    whole-clip statistics gets from the features, for the joint report to beat.

    Returns:
        Clip ids and ``(N, 2)`` out-of-fold scores ``tanh(decision)``: their signs are the predicted
        signs, their order the ranking (the mean level of a probe means nothing).
    """
    ids, decisions = clip_probe_decisions(clips, features, k, lam, transform, fold_seed, max_iter, probe)
    return ids, np.tanh(decisions).astype(np.float32)


#: The report's name and description of each probe's row (:func:`clip_probe_row`).
PROBE_ROWS = {
    "logistic": (
        "linear probe",
        "logistic regression (L2 0.1) on each clip's mean and std of signed-log1p features, one per output, "
        "the same folds (its mean level is not a prediction)",
    ),
    "rbf_svm": (
        "RBF-SVM probe",
        f"an RBF-kernel SVM (C {SVM_C:g}, gamma 1 / (width × variance)) on the same standardised clip "
        "statistics, one per output, the same folds (its mean level is not a prediction)",
    ),
}


def clip_probe_row(
    clips: Sequence[Clip], features: Mapping[str, FloatArray], k: int, probe: str
) -> dict[str, Any]:
    """The joint report's row of one probe (:func:`clip_probe_cv` on ``k`` folds): its clip scores."""
    ids, scores = clip_probe_cv(clips, features, k=k, probe=probe)
    by_id = {c.clip_id: c for c in clips}
    signs = np.stack([np.sign(by_id[i].targets[0]) for i in ids])
    name, source = PROBE_ROWS[probe]
    return {
        "model": name,
        "source": source,
        "folds": f"{k}/{k}",
        "clip": clip_scores(scores, signs),
        "by_confidence": scores_by_confidence(scores, signs, [by_id[i].confidence for i in ids]),
        "frame": None,
        "jitter": None,
    }


def teacher_levels(
    clips: Sequence[Clip],
    features: Mapping[str, FloatArray],
    k: int = 5,
    fold_seed: int = 0,
    probe: str = "logistic",
) -> dict[str, Float64Array]:
    """A probe teacher's graded view of clip-level labels: ``tanh(z / std(z))`` per clip and output.

    ``z`` is the probe's cross-fitted decision (:func:`clip_probe_decisions` over ``clips`` alone, so
    only these clips inform it). The logistic probe's logits are large (6 373 × 2 inputs, a few hundred
    clips: ``tanh(z)`` is ±1 for most clips); dividing by their spread over the clips keeps the
    teacher's order and makes a one-sigma clip worth ``tanh(1) = 0.76`` whichever probe teaches.

    Returns:
        ``(2,)`` levels in (-1, 1) by clip id.
    """
    ids, z = clip_probe_decisions(clips, features, k=k, fold_seed=fold_seed, probe=probe)
    scale = z.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return dict(zip(ids, np.tanh(z / scale), strict=True))
