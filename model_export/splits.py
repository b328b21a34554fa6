"""How clips are split: k folds by group, and a validation part by group, both seeded.

Every split keeps a group (a piece, a song, an artist) on one side, so no model is tested on a
group it was trained on; the same seed gives the same split on every machine (the CV folds committed
under ``docs/results/<run>/folds`` depend on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["group_folds", "validation_split"]


def group_folds(groups: Sequence[str], k: int, seed: int = 0) -> list[list[int]]:
    """Assign clip indices to ``k`` folds so that no group is split (shuffled, balanced by frames).

    Args:
        groups: Group (song/piece) of each clip.
        k: Number of folds (at most the number of groups).
        seed: Shuffling seed.

    Returns:
        ``k`` lists of clip indices.
    """
    unique = sorted(set(groups))
    if not 2 <= k <= len(unique):
        raise ValueError(f"need 2 <= k <= {len(unique)} groups, got k={k}")
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    fold_of = {g: i % k for i, g in enumerate(unique)}
    folds: list[list[int]] = [[] for _ in range(k)]
    for idx, g in enumerate(groups):
        folds[fold_of[g]].append(idx)
    return folds


def validation_split(groups: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (train, validation) by group, holding out about ``fraction`` of the groups."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n_val = max(1, round(len(unique) * fraction)) if len(unique) > 1 else 0
    held = set(unique[:n_val])
    train_idx = [i for i, g in enumerate(groups) if g not in held]
    val_idx = [i for i, g in enumerate(groups) if g in held]
    return train_idx, val_idx
