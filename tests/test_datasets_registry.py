from __future__ import annotations

from pathlib import Path

import pytest

from model_export.datasets import registry


def test_recipes_are_named_described_and_callable() -> None:
    assert set(registry.RECIPES) == {"songs1000", "deam", "pmemo", "vgmidi", "fourq", "synthetic"}
    for recipe in registry.RECIPES.values():
        assert callable(recipe.load)
        assert recipe.description
        assert "\n" not in recipe.description


def test_load_by_name(tmp_path: Path) -> None:
    clips = registry.load("synthetic", tmp_path, n_clips=2, duration_s=2.0)
    assert [c.num_frames for c in clips] == [4, 4]
    with pytest.raises(KeyError, match="known"):
        registry.load("nope", tmp_path)
