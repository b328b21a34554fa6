"""Summaries of a prediction: mean and spread per output, and Russell's circumplex quadrant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.core.contract import OUTPUTS
from app.core.types import FloatArray

__all__ = ["QUADRANTS", "EmotionSummary", "Quadrant", "quadrant_of", "summarise"]

Quadrant = Literal["Q1", "Q2", "Q3", "Q4"]
#: Russell's circumplex quadrants by the signs of mean arousal and valence (0 counts as positive).
QUADRANTS: dict[tuple[bool, bool], tuple[Quadrant, str]] = {
    (True, True): ("Q1", "high arousal, positive valence (e.g. happy, excited)"),
    (True, False): ("Q2", "high arousal, negative valence (e.g. angry, tense)"),
    (False, False): ("Q3", "low arousal, negative valence (e.g. sad, bored)"),
    (False, True): ("Q4", "low arousal, positive valence (e.g. calm, relaxed)"),
}


@dataclass(frozen=True)
class EmotionSummary:
    """Clip-level summary of per-frame predictions.

    Attributes:
        mean: Mean per output over the frames.
        std: Population standard deviation per output.
        quadrant: Circumplex quadrant of the mean (``Q1`` … ``Q4``).
        quadrant_label: What the quadrant stands for.
    """

    mean: dict[str, float]
    std: dict[str, float]
    quadrant: Quadrant
    quadrant_label: str


def quadrant_of(arousal: float, valence: float) -> Quadrant:
    """The circumplex quadrant of one (arousal, valence) point; 0 counts as positive.

    Example:
        >>> quadrant_of(-0.2, 0.4)
        'Q4'
    """
    return QUADRANTS[(arousal >= 0, valence >= 0)][0]


def summarise(emotion: FloatArray) -> EmotionSummary:
    """Mean, standard deviation and circumplex quadrant of ``(T, 2)`` arousal/valence frames.

    Example:
        >>> summarise(np.array([[0.5, -0.2], [0.3, -0.4]], np.float32)).quadrant
        'Q2'
    """
    mean = emotion.mean(axis=0, dtype=np.float64)
    std = emotion.std(axis=0, dtype=np.float64)
    quadrant, label = QUADRANTS[(bool(mean[0] >= 0), bool(mean[1] >= 0))]
    return EmotionSummary(
        mean={name: float(v) for name, v in zip(OUTPUTS, mean, strict=True)},
        std={name: float(v) for name, v in zip(OUTPUTS, std, strict=True)},
        quadrant=quadrant,
        quadrant_label=label,
    )
