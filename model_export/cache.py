"""Feature cache: each clip is extracted once per feature configuration, in parallel, resumably.

Entries are keyed by the audio file's content hash, the feature configuration's key, the openSMILE
version and the clip's time range, so a re-rendered file or a different analysis rate never reuses
stale features. Files are written atomically (temporary name, then rename): an interrupted run
leaves no half-written entry and the next run carries on where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.core.audio import decode
from app.core.features import LOOKAHEAD_S, FeatureExtractor, opensmile_version
from app.core.types import FloatArray
from model_export.datasets.base import Clip

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """Content hash of a file (streamed)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureCache:
    """Features of clips on disk under ``root/<feature key>/``.

    Args:
        root: Cache folder (outside git).
        extractor: The one feature path; its configuration is part of every key.
    """

    def __init__(self, root: Path, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        key = hashlib.sha256(
            f"{extractor.config.key()}|{opensmile_version()}|{extractor.feature_names_sha256}".encode()
        ).hexdigest()[:16]
        self.folder = root / key
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, clip: Clip) -> Path:
        """Where the clip's features live (the audio's content hash and the time range name it)."""
        rng = f"{clip.offset_s:.3f}_{clip.num_frames}"
        return self.folder / f"{file_sha256(clip.audio_path)[:24]}_{rng}.npy"

    def compute(self, clip: Clip) -> FloatArray:
        """Decode the clip's labelled range and extract its features (no caching).

        Returns:
            ``(T', F)`` features with ``T' <= clip.num_frames`` (fewer if the audio ends early).
        """
        cfg = self.extractor.config
        signal = decode(
            clip.audio_path,
            cfg.sample_rate,
            offset_s=clip.offset_s,
            duration_s=clip.num_frames * cfg.hop_s + LOOKAHEAD_S,
            min_duration_s=cfg.window_s,
        )
        values = self.extractor.extract(signal).values
        return values[: clip.num_frames]

    def get(self, clip: Clip) -> FloatArray:
        """Features of one clip, from the cache or computed and stored."""
        path = self.path_for(clip)
        if path.exists():
            return np.asarray(np.load(path), dtype=np.float32)
        values = self.compute(clip)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, values)
        tmp.replace(path)
        return values

    def load_all(
        self, clips: Sequence[Clip], workers: int | None = None, progress: bool = True
    ) -> dict[str, FloatArray]:
        """Features of every clip, extracting missing ones in parallel threads.

        openSMILE and libsndfile release the GIL, so threads share one extractor and use all cores.
        A clip that fails to decode is logged and left out rather than stopping a long run.

        Args:
            clips: Clips to load.
            workers: Threads (default: one per core).
            progress: Show a progress bar with ETA.

        Returns:
            Mapping of clip id to ``(T', F)`` features.
        """
        workers = workers or os.cpu_count() or 1
        out: dict[str, FloatArray] = {}
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(self.get, clip): clip for clip in clips}
            bar = tqdm(total=len(futures), desc="features", unit="clip", disable=not progress)
            for fut in as_completed(futures):
                clip = futures[fut]
                try:
                    out[clip.clip_id] = fut.result()
                except Exception as exc:  # one bad file must not stop hours of extraction
                    log.warning("skipping %s: %s", clip.clip_id, exc)
                bar.update()
            bar.close()
        return out
