"""What every dataset recipe returns: clips with per-frame targets on the contract's frame grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.contract import OUTPUTS
from app.core.types import FloatArray

#: What a clip's targets are: per-frame ratings, or one static label for the whole clip.
LABEL_KINDS = ("frame", "clip")


@dataclass(frozen=True, eq=False)
class Clip:
    """One labelled clip.

    Attributes:
        clip_id: Identifier, unique within the dataset.
        audio_path: Audio file to decode.
        targets: ``(T, 2)`` float32 arousal/valence (the contract's ``OUTPUTS``, in order) on the
            [-1, 1] scale; row ``k`` labels the frame
            covering ``[offset_s + 0.5 k, offset_s + 0.5 k + 0.5)`` s of the audio file.
        offset_s: Where frame 0 starts in the audio file, in seconds.
        group: Cross-validation group (song/piece): folds never split a group.
        variant_of: For an augmented rendition, the ``clip_id`` of the original clip whose labels it
            shares; empty for an original. Variants only ever join their original in training.
        label_kind: ``"frame"``: every row of ``targets`` is a rating of that frame; ``"clip"``: one
            static label for the whole clip, repeated on every row (e.g. the signs of a 4Q quadrant),
            which training turns into a clip-level loss (``model_export.train``).
        confidence: How sure the label is, in (0, 1] (4Q: PQuad); a weight training may use.
    """

    clip_id: str
    audio_path: Path
    targets: FloatArray
    offset_s: float = 0.0
    group: str = ""
    variant_of: str = ""
    label_kind: str = "frame"
    confidence: float = 1.0

    def __post_init__(self) -> None:
        t = np.asarray(self.targets, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] != len(OUTPUTS) or t.shape[0] == 0:
            raise ValueError(f"{self.clip_id}: targets must be (T>0, 2), got {t.shape}")
        if not np.all(np.isfinite(t)) or np.abs(t).max() > 1.0 + 1e-6:
            raise ValueError(f"{self.clip_id}: targets must be finite and within [-1, 1]")
        if self.label_kind not in LABEL_KINDS:
            raise ValueError(f"{self.clip_id}: label_kind must be in {LABEL_KINDS}, not {self.label_kind!r}")
        if not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"{self.clip_id}: confidence must be in (0, 1], got {self.confidence}")
        object.__setattr__(self, "targets", t)
        if not self.group:
            object.__setattr__(self, "group", self.clip_id)

    @property
    def num_frames(self) -> int:
        """Number of labelled frames T."""
        return int(self.targets.shape[0])


def originals(clips: Sequence[Clip]) -> list[Clip]:
    """The clips that are not augmented variants of another."""
    return [c for c in clips if not c.variant_of]


def variants_by_original(clips: Sequence[Clip]) -> dict[str, list[Clip]]:
    """Augmented variants grouped by the id of their original clip, in input order."""
    out: dict[str, list[Clip]] = {}
    for c in clips:
        if c.variant_of:
            out.setdefault(c.variant_of, []).append(c)
    return out
