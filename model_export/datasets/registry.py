"""Names of the dataset recipes, their loaders and one-line descriptions.

Every loader takes the dataset folder as its first argument and returns
:class:`~model_export.datasets.base.Clip` objects; recipe-specific options are keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_export.datasets import deam, fourq, pmemo, songs1000, synthetic, vgmidi
from model_export.datasets.base import Clip


@dataclass(frozen=True)
class Recipe:
    """A dataset recipe.

    Attributes:
        load: ``load(root, **options) -> list[Clip]``.
        description: One line for listings and model cards.
    """

    load: Callable[..., list[Clip]]
    description: str


RECIPES: dict[str, Recipe] = {
    "songs1000": Recipe(
        songs1000.load,
        "1000 Songs (Soleymani et al. 2013): 45 s clips, 2 Hz arousal/valence over the last 30.5 s",
    ),
    "deam": Recipe(
        deam.load,
        "DEAM (MediaEval 2013-15): per-song averaged 2 Hz arousal/valence from 15 s on, ragged lengths",
    ),
    "pmemo": Recipe(
        pmemo.load,
        "PMEmo: chorus clips with 2 Hz arousal/valence from 15.5 s, [0, 1] mapped to [-1, 1]",
    ),
    "vgmidi": Recipe(
        vgmidi.load,
        "VGMIDI: 200 piano MIDI pieces rendered with fluidsynth, per-measure labels on 0.5 s frames",
    ),
    "fourq": Recipe(
        fourq.load,
        "4Q (Panda et al. 2018): 30 s AllMusic previews, one Russell quadrant per clip (clip-level signs)",
    ),
    "synthetic": Recipe(
        synthetic.load,
        "Synthetic music with targets that are known, lagged functions of tempo, level, timbre and mode",
    ),
}


def load(name: str, root: Path, **options: Any) -> list[Clip]:
    """Load dataset ``name`` from ``root`` with its recipe.

    Raises:
        KeyError: if no recipe has that name.
    """
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(RECIPES))}") from None
    return recipe.load(Path(root), **options)
