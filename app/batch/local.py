"""The local engine: score a stream of tracks on every core of one machine, in bounded memory.

Why threads, not processes: the time goes to libsndfile/soxr decoding, openSMILE and ONNX Runtime, all
of which release the GIL, so one process with a thread per core keeps the cores busy (measured in
``bench/batch.py``) while holding **one** model and one extractor; processes would load the model
and openSMILE's configuration per core and pickle every result back. The main thread reads the
input stream and keeps at most ``2 × workers`` tracks in flight (a bounded window, however long the
catalogue), takes results as they complete, and hands them to the :class:`OutputFolder`.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.batch.output import DoneIds, OutputFolder
from app.batch.scoring import Failure, Scored, Scorer, failure
from app.batch.tracks import InputProblem, Item, Track
from app.core.errors import InvalidRequestError

__all__ = ["JobStats", "pending", "record_problem", "run_local"]


@dataclass
class JobStats:
    """What a run did.

    Attributes:
        done: Tracks scored and written in this run.
        failed: Tracks recorded in the errors file in this run.
        skipped: Tracks already in the output (an earlier run's).
        audio_s: Seconds of audio analysed in this run.
        started: ``time.monotonic()`` at the start.
        failures_by_code: Failures per error code.
    """

    done: int = 0
    failed: int = 0
    skipped: int = 0
    audio_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failures_by_code: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts, audio hours and throughput (tracks/s and × real time)."""
        wall = max(time.monotonic() - self.started, 1e-9)
        return {
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "audio_hours": self.audio_s / 3600,
            "wall_s": wall,
            "tracks_per_s": self.done / wall,
            "x_realtime": self.audio_s / wall,
            "failures_by_code": dict(sorted(self.failures_by_code.items())),
        }

    def count_failure(self, item: Failure) -> None:
        """Count one failure."""
        self.failed += 1
        self.failures_by_code[item.code] = self.failures_by_code.get(item.code, 0) + 1


def pending(items: Iterable[Item], done: DoneIds, stats: JobStats, limit: int | None) -> Iterable[Item]:
    """The items still to do: skips ids already written (and repeats of an id within the input).

    Stops after ``limit`` items to do (skipped ones do not count), so ``--limit`` means "this much work".
    """
    taken = 0
    for item in items:
        if limit is not None and taken >= limit:
            return
        if item.id in done:
            stats.skipped += 1
            continue
        done.add(item.id)  # a later line with the same id is a repeat, not more work
        taken += 1
        yield item


def record_problem(
    item: InputProblem, out: OutputFolder, stats: JobStats, progress: Callable[[int, float], None] | None
) -> None:
    """Record an input line that is not a track as a failure (``invalid_request``), as both engines do."""
    problem = failure(item.id, item.path, InvalidRequestError(item.message))
    out.record_failure(problem)
    stats.count_failure(problem)
    if progress is not None:
        progress(1, 0.0)


def run_local(
    scorer: Scorer,
    items: Iterable[Item],
    out: OutputFolder,
    *,
    workers: int,
    limit: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> JobStats:
    """Score ``items`` with ``workers`` threads and write them to ``out``.

    Args:
        scorer: The model and limits.
        items: Tracks (and input problems) in input order; consumed lazily.
        out: Where rows and failures go; ids already there are skipped.
        workers: Threads (one per core is right: see the module docstring).
        limit: Score at most this many tracks in this run.
        progress: Called with (tracks finished, seconds of audio) after each track.

    Returns:
        The run's counts. Per-track failures are recorded, never raised.
    """
    stats = JobStats()
    p = scorer.predictor
    rate = scorer.config.sample_rate
    window = 2 * workers
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mer-score") as pool:
        running: dict[cf.Future[Scored], Track] = {}

        def settle(block: bool) -> None:
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED if block else cf.ALL_COMPLETED)
            for future in finished:
                track = running.pop(future)
                try:
                    scored = future.result()
                except Exception as exc:  # per-track: recorded with the API's code, the run goes on
                    item = failure(track.id, track.path, exc)
                    out.record_failure(item)
                    stats.count_failure(item)
                    seconds = 0.0
                else:
                    out.add(scored.row(p.model_name, p.model_version, rate))
                    stats.done += 1
                    seconds = scored.analysed_s
                    stats.audio_s += seconds
                if progress is not None:
                    progress(1, seconds)

        try:
            for item in pending(items, out.done_ids(), stats, limit):
                if isinstance(item, InputProblem):
                    record_problem(item, out, stats, progress)
                    continue
                running[pool.submit(scorer.score, item)] = item
                if len(running) >= window:
                    settle(block=True)
            if running:
                settle(block=False)
        finally:
            # Also on Ctrl-C: the rows finished so far become a part, so a rerun does not redo them.
            out.close()
    return stats
