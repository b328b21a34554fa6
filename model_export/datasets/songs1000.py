"""1000 Songs for Emotional Analysis of Music (Soleymani et al., 2013) → clips.

Expected layout (as distributed)::

    <root>/clips_45seconds/<song_id>.mp3
    <root>/annotations/arousal_cont_average.csv
    <root>/annotations/valence_cont_average.csv

Each CSV has the header ``song_id,sample_15000ms,sample_15500ms,...,sample_45000ms``: 61 values per
song at 2 Hz, the mean over listeners of a continuous rating already on the [-1, 1] scale, so no
rescaling is applied (values a hair outside are clipped, values far outside are refused).

Label alignment (a decision, applied the same way to DEAM and PMEmo): the rating sampled at ``t`` ms
describes what the listener had heard up to ``t``, so it labels the 500 ms frame that *ends* at ``t``.
The first label (15 000 ms) thus labels ``[14.5, 15.0)`` s: ``offset_s = 14.5`` and frame ``k`` covers
``[14.5 + 0.5 k, 15.0 + 0.5 k)``. All 61 labels are used and the frames span the last 30.5 s of the
45 s clip. The paper speaks of "the last 30 s, 61 frames"; under the contract's complete-window
policy 61 frames need 30.5 s, and starting at 15.0 s would leave the 61st label without a complete
frame, so the extra half second is taken at the front.

Songs are skipped (one warning per reason, with the count) when their audio is missing or
unreadable, when either CSV lacks their row, or when a row holds a missing value (NaN or empty cell).
If an audio file is shorter than its labels, the frames it does not cover are dropped.
"""

from __future__ import annotations

from pathlib import Path

from model_export.datasets._common import clips_from_wide_csvs
from model_export.datasets.base import Clip

AUDIO_DIR = "clips_45seconds"
AROUSAL_CSV = "annotations/arousal_cont_average.csv"
VALENCE_CSV = "annotations/valence_cont_average.csv"


def load(root: Path, *, check_audio: bool = True) -> list[Clip]:
    """Load the 1000 Songs continuous annotations as clips.

    Args:
        root: Dataset folder (holding ``clips_45seconds/`` and ``annotations/``).
        check_audio: Read each MP3's header to skip unreadable files and drop frames past the end.

    Returns:
        One clip per usable song, ``offset_s = 14.5``, normally 61 frames; ``group`` is the song id.

    Raises:
        FileNotFoundError: if an annotation CSV is missing.
        ValueError: if the CSVs are malformed or a label is off the [-1, 1] scale.
    """
    root = Path(root)
    arousal_csv, valence_csv = root / AROUSAL_CSV, root / VALENCE_CSV
    for path in (arousal_csv, valence_csv):
        if not path.is_file():
            raise FileNotFoundError(f"1000 Songs annotation file not found: {path}")
    audio_for = {p.stem: p for p in sorted((root / AUDIO_DIR).glob("*.mp3"))}
    return clips_from_wide_csvs(
        arousal_csv,
        valence_csv,
        audio_for,
        ragged=False,
        check_audio=check_audio,
        dataset="1000 Songs",
    )
