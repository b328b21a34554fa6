from __future__ import annotations

import numpy as np
import pytest

from model_export.clip_metrics import clip_means, clip_scores, jitter, roc_auc

SIGNS = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]] * 3, np.float32)


def test_auc_is_the_chance_a_positive_outranks_a_negative_with_ties_half() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert roc_auc(np.array([1.0, 1.0, 1.0]), np.array([True, False, False])) == 0.5
    assert roc_auc(np.array([3.0, 2.0, 1.0]), np.array([True, True, False])) == 1.0
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([True, True])))


def test_perfect_clip_means_score_one_everywhere() -> None:
    s = clip_scores(0.4 * SIGNS, SIGNS)
    assert s["quadrant_accuracy"] == 1.0
    assert s["macro_f1"] == 1.0
    assert s["confusion"] == (np.eye(4, dtype=int) * 3).tolist()
    for dim in ("arousal", "valence"):
        assert s[dim]["sign_accuracy"] == 1.0
        assert s[dim]["auc"] == 1.0
        assert s[dim]["mean_prediction"] == pytest.approx(0.0)


def test_a_model_that_calls_everything_happy_gets_a_quarter_and_a_biased_mean() -> None:
    means = np.tile([0.3, 0.1], (len(SIGNS), 1)).astype(np.float32)
    s = clip_scores(means, SIGNS)
    assert s["quadrant_accuracy"] == 0.25
    assert s["confusion"][2] == [3, 0, 0, 0]  # every Q3 clip predicted Q1
    assert s["macro_f1"] == pytest.approx(0.25 * (2 * 0.25 * 1.0 / 1.25))
    assert s["arousal"]["sign_accuracy"] == 0.5
    assert s["arousal"]["auc"] == 0.5
    assert s["arousal"]["mean_prediction"] == pytest.approx(0.3)


def test_clip_means_and_jitter() -> None:
    a = np.array([[0.0, 1.0], [0.5, 1.0], [0.0, 0.0]], np.float32)
    b = np.array([[1.0, 0.0]], np.float32)  # one frame: no step
    np.testing.assert_allclose(clip_means([a, b]), [[1 / 6, 2 / 3], [1.0, 0.0]], rtol=1e-6)
    assert jitter([a, b]) == pytest.approx([0.5, 0.5])
