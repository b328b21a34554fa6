from __future__ import annotations

import numpy as np
import pytest

from model_export.clip_metrics import (
    clip_means,
    clip_scores,
    confidence_parts,
    jitter,
    roc_auc,
    scores_by_confidence,
)

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


def test_confidence_parts_are_about_equal_and_keep_equal_confidences_together() -> None:
    # 4Q-like: few values, one of them shared by many clips.
    conf = np.array([0.55, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 0.52])
    parts = confidence_parts(conf, parts=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(conf)))
    highest = [conf[p].max() for p in parts]
    lowest = [conf[p].min() for p in parts]
    # Ordered, and no value split across two groups.
    assert highest[0] < lowest[1]
    assert highest[1] < lowest[2]
    # Cuts at the value changes nearest to 4 and 8: the 0.6 block stays whole (2/6/4, not 4/4/4).
    assert [len(p) for p in parts] == [2, 6, 4]
    # Equal split when the values allow it, whatever the input order.
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(np.arange(30) / 30)
    assert [len(p) for p in confidence_parts(shuffled, parts=3)] == [10, 10, 10]
    # Four groups of 7.5: a cut equally near two changes takes the lower one.
    assert [len(p) for p in confidence_parts(shuffled, parts=4)] == [7, 8, 7, 8]


def test_confidences_with_too_few_values_are_not_split() -> None:
    assert confidence_parts(np.ones(10)) == []
    assert confidence_parts([0.5, 0.5, 1.0, 1.0]) == []  # two values cannot make three groups
    assert [p.tolist() for p in confidence_parts([0.3, 0.1, 0.2])] == [[1], [2], [0]]
    with pytest.raises(ValueError, match="parts"):
        confidence_parts([0.1, 0.2], parts=1)


def test_scores_by_confidence_are_the_clip_scores_of_each_group() -> None:
    rng = np.random.default_rng(1)
    signs = np.tile(SIGNS, (4, 1))  # 48 clips, balanced
    conf = np.repeat([0.5, 0.7, 0.9], 16)[rng.permutation(48)]
    # Sure labels are predicted well, unsure ones at random.
    noise = np.where(conf[:, None] > 0.8, 0.1, 2.0)
    means = (0.4 * signs + noise * rng.standard_normal(signs.shape)).astype(np.float32)
    table = scores_by_confidence(means, signs, conf)
    assert [t["clips"] for t in table] == [16, 16, 16]
    assert [t["confidence"] for t in table] == [[0.5, 0.5], [0.7, 0.7], [0.9, 0.9]]
    for t, value in zip(table, (0.5, 0.7, 0.9), strict=True):
        want = clip_scores(means[conf == value], signs[conf == value])
        assert t["quadrant_accuracy"] == want["quadrant_accuracy"]
        for dim in ("arousal", "valence"):
            assert t[dim]["auc"] == want[dim]["auc"]
            assert t[dim]["sign_accuracy"] == want[dim]["sign_accuracy"]
    assert table[2]["quadrant_accuracy"] == 1.0 > table[0]["quadrant_accuracy"]
    # A group with one class has no AUC: None (JSON null), not NaN.
    pair = SIGNS[[0, 1, 0, 1]]  # Q1, Q2 twice: both aroused, one positive and one negative
    one_class = scores_by_confidence(0.4 * pair, pair, [0.1, 0.2, 0.3, 0.4], 2)
    assert one_class[0]["arousal"]["auc"] is None
    assert one_class[0]["valence"]["auc"] == 1.0
    assert scores_by_confidence(means, signs, np.ones(48)) == []
