"""Clip-level scores of per-frame predictions against static clip labels (4Q's Russell quadrants).

A clip's prediction is the mean of its per-frame outputs, as the service's summary reports it; its
quadrant is the one of that mean (:func:`app.core.emotion.quadrant_of`, 0 counts as positive). Scores:
quadrant accuracy, sign accuracy and ROC AUC per dimension, macro F1 over the four quadrants, the
confusion matrix and the mean predicted level (a balanced set should average near zero); the same
scores within parts of the clips ordered by how sure their labels are (4Q: PQuad), which shows how
much of a model's error sits where the raters disagreed. Also here: the frame-to-frame jitter of a set
of curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from app.core.contract import OUTPUTS
from app.core.emotion import quadrant_of
from app.core.types import FloatArray

__all__ = [
    "QUADRANT_NAMES",
    "clip_means",
    "clip_scores",
    "confidence_parts",
    "jitter",
    "roc_auc",
    "scores_by_confidence",
]

QUADRANT_NAMES = ("Q1", "Q2", "Q3", "Q4")


def clip_means(predictions: Sequence[FloatArray]) -> FloatArray:
    """``(N, O)`` mean over the frames of each ``(T_i, O)`` prediction."""
    return np.stack([p.mean(axis=0, dtype=np.float64) for p in predictions]).astype(np.float32)


def roc_auc(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (ties count half).

    The Mann–Whitney form: the probability that a random positive scores above a random negative.

    Example:
        >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
        0.75
    """
    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def clip_scores(means: FloatArray, signs: FloatArray) -> dict[str, Any]:
    """Quadrant and per-dimension scores of clip means against the signs of their labels.

    Args:
        means: ``(N, 2)`` predicted clip means (arousal, valence).
        signs: ``(N, 2)`` label signs, ±1.

    Returns:
        ``quadrant_accuracy``, ``macro_f1``, ``confusion`` (rows: true Q1–Q4, columns: predicted),
        ``clips``, and per output ``sign_accuracy``, ``auc`` and ``mean_prediction``.
    """
    m = np.asarray(means, dtype=np.float64)
    s = np.asarray(signs, dtype=np.float64)
    true_q = [quadrant_of(a, v) for a, v in s]
    pred_q = [quadrant_of(a, v) for a, v in m]
    index = {q: i for i, q in enumerate(QUADRANT_NAMES)}
    confusion = np.zeros((4, 4), dtype=int)
    for t, p in zip(true_q, pred_q, strict=True):
        confusion[index[t], index[p]] += 1
    f1 = []
    for i in range(4):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    out: dict[str, Any] = {
        "clips": int(m.shape[0]),
        "quadrant_accuracy": float(np.trace(confusion) / max(1, m.shape[0])),
        "macro_f1": float(np.mean(f1)),
        "confusion": confusion.tolist(),
    }
    for d, name in enumerate(OUTPUTS):
        out[name] = {
            "sign_accuracy": float(np.mean((m[:, d] >= 0) == (s[:, d] > 0))),
            "auc": roc_auc(m[:, d], s[:, d] > 0),
            "mean_prediction": float(m[:, d].mean()),
        }
    return out


def confidence_parts(confidence: npt.ArrayLike, parts: int = 3) -> list[npt.NDArray[np.intp]]:
    """Clips in ``parts`` groups of about equal size by label confidence, equal confidences kept together.

    Each cut between two groups sits where the sorted confidences change value, at the change nearest
    to an equal split (4Q's PQuad takes few values: 185 of its 600 clips have exactly 2/3, so
    quantile edges would leave one group nearly empty).

    Args:
        confidence: ``(N,)`` confidence of each clip's label.
        parts: Groups, at least 2.

    Returns:
        Indices into ``confidence`` per group, least sure first; an empty list when the confidences take
        fewer than ``parts`` distinct values (nothing to compare).

    Example:
        >>> [g.tolist() for g in confidence_parts([0.9, 0.5, 0.5, 0.7, 1.0, 0.6], parts=3)]
        [[1, 2], [5, 3], [0, 4]]
    """
    if parts < 2:
        raise ValueError(f"parts must be >= 2, got {parts}")
    c = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(c, kind="stable")
    ranked = c[order]
    changes = np.flatnonzero(np.diff(ranked) > 0) + 1  # a cut before index i keeps ties together
    cuts: list[int] = []
    for k in range(1, parts):
        free = changes[changes > (cuts[-1] if cuts else 0)]
        if free.size < parts - k:  # too few values left to give every later group its own
            return []
        target = k * c.size / parts
        # The nearest change to an equal split that still leaves one change for each later cut.
        usable = free[: free.size - (parts - 1 - k)]
        cuts.append(int(usable[np.argmin(np.abs(usable - target))]))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, c.size], strict=True)]


def scores_by_confidence(
    means: FloatArray, signs: FloatArray, confidence: npt.ArrayLike, parts: int = 3
) -> list[dict[str, Any]]:
    """:func:`clip_scores` within each of :func:`confidence_parts`' groups of clips.

    Args:
        means: ``(N, 2)`` predicted clip means (or any scores whose order is the ranking).
        signs: ``(N, 2)`` label signs, ±1.
        confidence: ``(N,)`` confidence of each label (4Q: PQuad).
        parts: Groups.

    Returns:
        Per group, least sure first: ``confidence`` (its lowest and highest value), ``clips``,
        ``quadrant_accuracy`` and per output ``sign_accuracy`` and ``auc`` (``None`` where a group holds
        one class only); empty when the confidences cannot be split.
    """
    m, s = np.asarray(means), np.asarray(signs)
    c = np.asarray(confidence, dtype=np.float64)
    out = []
    for idx in confidence_parts(c, parts):
        scores = clip_scores(m[idx], s[idx])
        row: dict[str, Any] = {
            "confidence": [float(c[idx].min()), float(c[idx].max())],
            "clips": int(idx.size),
            "quadrant_accuracy": scores["quadrant_accuracy"],
        }
        for name in OUTPUTS:
            auc = scores[name]["auc"]
            row[name] = {
                "sign_accuracy": scores[name]["sign_accuracy"],
                "auc": None if not np.isfinite(auc) else auc,
            }
        out.append(row)
    return out


def jitter(curves: Sequence[FloatArray]) -> list[float]:
    """Mean absolute frame-to-frame change per output, over every consecutive pair of every curve."""
    steps = [np.abs(np.diff(c.astype(np.float64), axis=0)) for c in curves if c.shape[0] > 1]
    if not steps:
        return [float("nan")] * (curves[0].shape[1] if curves else len(OUTPUTS))
    return [float(v) for v in np.concatenate(steps).mean(axis=0)]
