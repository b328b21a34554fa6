"""Clip-level scores of per-frame predictions against static clip labels (4Q's Russell quadrants).

A clip's prediction is the mean of its per-frame outputs, as the service's summary reports it; its
quadrant is the one of that mean (:func:`app.core.emotion.quadrant_of`, 0 counts as positive). Scores:
quadrant accuracy, sign accuracy and ROC AUC per dimension, macro F1 over the four quadrants, the
confusion matrix and the mean predicted level (a balanced set should average near zero). Also here:
the frame-to-frame jitter of a set of curves.
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

__all__ = ["QUADRANT_NAMES", "clip_means", "clip_scores", "jitter", "roc_auc"]

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


def jitter(curves: Sequence[FloatArray]) -> list[float]:
    """Mean absolute frame-to-frame change per output, over every consecutive pair of every curve."""
    steps = [np.abs(np.diff(c.astype(np.float64), axis=0)) for c in curves if c.shape[0] > 1]
    if not steps:
        return [float("nan")] * (curves[0].shape[1] if curves else len(OUTPUTS))
    return [float(v) for v in np.concatenate(steps).mean(axis=0)]
