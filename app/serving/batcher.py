"""Dynamic micro-batching of inference in front of ONE inference thread.

:class:`DynamicBatcher` lives on the event loop: requests :meth:`~DynamicBatcher.submit` validated
feature arrays and await their results, while one loop task gathers what has queued up (at most
``max_batch`` clips and ``max_batch_frames`` padded frames, waiting at most ``max_wait_s`` for
companions once a clip is there) and hands each batch to ONE inference thread. While a batch runs, the
next one fills, so under load batches grow by themselves and the model runs back to back. The model is
causal, so the right-padding that :meth:`app.core.predictor.Predictor.predict_batch` adds cannot change a
clip's frames.

The queue is bounded: beyond ``max_queue`` waiting clips a request fails at once with
:class:`~app.core.errors.OverloadedError` (503 + Retry-After) instead of waiting without limit. The
batcher knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.core.errors import OverloadedError, PayloadTooLargeError, ShuttingDownError
from app.core.types import FloatArray

__all__ = ["BatchObserver", "DynamicBatcher"]

log = logging.getLogger(__name__)

#: Called after every batch with its size (clips), padded frames and inference seconds.
BatchObserver = Callable[[int, int, float], None]


@dataclass
class _Job:
    clip: FloatArray
    future: asyncio.Future[FloatArray]


class DynamicBatcher:
    """Gather concurrent clips into batches for one inference thread.

    Args:
        run_batch: Maps a list of ``(T_i, F)`` arrays to one ``(T_i, O)`` result each, in order
            (:meth:`app.core.predictor.Predictor.predict_batch`); called in the inference thread only.
        max_batch: Most clips per call.
        max_batch_frames: Most padded frames (clips x longest clip) per call; a longer clip runs alone.
        max_wait_s: How long the first clip of a batch waits for companions.
        max_queue: Most clips waiting; beyond that :meth:`submit` raises ``OverloadedError``.
        observe: Optional callback per batch (size, padded frames, seconds), e.g. for metrics.

    Example:
        >>> batcher = DynamicBatcher(predictor.predict_batch, max_batch=16, max_batch_frames=4096,
        ...                          max_wait_s=0.005, max_queue=64)
        >>> await batcher.start()
        >>> [y] = await batcher.submit([features])
        >>> await batcher.stop()
    """

    def __init__(
        self,
        run_batch: Callable[[list[FloatArray]], list[FloatArray]],
        *,
        max_batch: int,
        max_batch_frames: int,
        max_wait_s: float,
        max_queue: int,
        observe: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_batch_frames < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch, max_batch_frames and max_queue must be >= 1, max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_batch_frames = max_batch_frames
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._observe = observe
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # One thread: ONNX Runtime already spreads one call over its intra-op threads, and a single
        # caller keeps batches (not concurrent small calls) the unit of work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mer-infer")

    @property
    def queued(self) -> int:
        """Clips waiting for a batch (not yet handed to the inference thread)."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the batching task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="mer-batcher")

    async def submit(self, clips: Sequence[FloatArray]) -> list[FloatArray]:
        """Queue validated clips and wait for their results (one per clip, in order).

        The clips of one call may land in different batches. Cancelling the caller (a timeout) drops
        those clips that have not reached the model yet.

        Raises:
            OverloadedError: If the queue cannot take the clips now.
            PayloadTooLargeError: If one call brings more clips than the queue can ever hold.
            ShuttingDownError: If :meth:`stop` has been called.
        """
        if self._closing or self._task is None:
            raise ShuttingDownError("the service is shutting down and takes no new work")
        if len(clips) > self.max_queue:
            raise PayloadTooLargeError(
                f"{len(clips)} clips in one request; at most {self.max_queue} (the queue size) are accepted"
            )
        if len(self._queue) + len(clips) > self.max_queue:
            raise OverloadedError(
                f"inference queue is full ({len(self._queue)} of {self.max_queue} clips waiting); "
                "retry shortly"
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(clip, loop.create_future()) for clip in clips]
        self._queue.extend(jobs)
        self._wakeup.set()
        # gather cancels the jobs' futures if the caller is cancelled; the loop then skips them.
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def stop(self) -> None:
        """Take no new clips, finish every queued one, then stop the task and the inference thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_companions(loop)
            batch = self._take()
            if not batch:
                continue
            clips = [job.clip for job in batch]
            padded = len(clips) * max(c.shape[0] for c in clips)
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, clips)
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} clips")
            except Exception as exc:  # every waiter must hear of it, or its request would hang
                log.exception(
                    "inference failed for a batch of %d clips (%d padded frames)", len(batch), padded
                )
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            else:
                for job, y in zip(batch, results, strict=True):
                    if not job.future.done():  # cancelled by a timeout meanwhile
                        job.future.set_result(y)
            if self._observe is not None:
                with contextlib.suppress(Exception):  # metrics must never break inference
                    self._observe(len(batch), padded, time.perf_counter() - start)

    async def _gather_companions(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to ``max_wait_s`` after the first clip for the batch to fill."""
        deadline = loop.time() + self.max_wait_s
        while len(self._queue) < self.max_batch and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """Pop the next batch in arrival order, within ``max_batch`` and ``max_batch_frames``."""
        batch: list[_Job] = []
        longest = 0
        while self._queue and len(batch) < self.max_batch:
            job = self._queue[0]
            if job.future.done():  # its request timed out or went away
                self._queue.popleft()
                continue
            frames = job.clip.shape[0]
            if batch and (len(batch) + 1) * max(longest, frames) > self.max_batch_frames:
                break
            batch.append(self._queue.popleft())
            longest = max(longest, frames)
        return batch
