"""Dynamic micro-batching of inference, and the bounded worker pool in front of it.

:class:`DynamicBatcher` lives on the event loop: requests :meth:`~DynamicBatcher.submit` validated
feature arrays and await their results, while one loop task gathers what has queued up (at most
``max_batch`` clips and ``max_batch_frames`` padded frames, waiting at most ``max_wait_s`` for
companions once a clip is there) and hands each batch to ONE inference thread. While a batch runs, the
next one fills, so under load batches grow by themselves and the model runs back to back. The model is
causal, so the right-padding that :meth:`app.predictor.Predictor.predict_batch` adds cannot change a
clip's frames.

:class:`WorkerPool` runs decoding and feature extraction (and the parsing of large bodies) off the
event loop in a fixed number of threads.

Both queues are bounded: beyond ``max_queue`` waiting items a request fails at once with
:class:`~app.errors.OverloadedError` (503 + Retry-After) instead of waiting without limit. Neither
class knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from app.errors import OverloadedError, PayloadTooLargeError, ShuttingDownError

__all__ = ["BatchObserver", "DynamicBatcher", "WorkerPool"]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
#: Called after every batch with its size (clips), padded frames and inference seconds.
BatchObserver = Callable[[int, int, float], None]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Job:
    clip: FloatArray
    future: asyncio.Future[FloatArray]


class DynamicBatcher:
    """Gather concurrent clips into batches for one inference thread.

    Args:
        run_batch: Maps a list of ``(T_i, F)`` arrays to one ``(T_i, O)`` result each, in order
            (:meth:`app.predictor.Predictor.predict_batch`); called in the inference thread only.
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


class WorkerPool:
    """A fixed thread pool with a bounded wait queue, awaited from the event loop.

    Args:
        workers: Threads.
        max_queue: Most calls waiting for a free thread; beyond that :meth:`run` raises
            ``OverloadedError`` at once.

    Example:
        >>> pool = WorkerPool(workers=2, max_queue=64)
        >>> features = await pool.run(extractor.extract, signal)
        >>> await pool.shutdown()
    """

    def __init__(self, workers: int, max_queue: int) -> None:
        if workers < 1 or max_queue < 1:
            raise ValueError("workers and max_queue must be >= 1")
        self.workers = workers
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mer-worker")
        self._lock = threading.Lock()
        self._waiting = 0
        self._busy = 0
        self._closing = False

    @property
    def waiting(self) -> int:
        """Calls waiting for a free thread."""
        return self._waiting

    @property
    def busy(self) -> int:
        """Threads running a call now."""
        return self._busy

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` in a worker thread and return its result.

        Cancelling the caller before the call has started takes it off the queue; a call that has
        started runs to the end (threads cannot be interrupted), its result discarded.

        Raises:
            OverloadedError: If ``max_queue`` calls are already waiting.
            ShuttingDownError: If :meth:`shutdown` has been called.
        """
        with self._lock:
            if self._closing:
                raise ShuttingDownError("the service is shutting down and takes no new work")
            if self._waiting >= self.max_queue:
                raise OverloadedError(
                    f"all {self.workers} workers are busy and {self._waiting} requests are waiting; "
                    "retry shortly"
                )
            self._waiting += 1

        def call() -> R:
            with self._lock:
                self._waiting -= 1
                self._busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        def forget_if_cancelled(f: Future[R]) -> None:
            if f.cancelled():  # never started: call() did not take it off the count
                with self._lock:
                    self._waiting -= 1

        future = self._executor.submit(call)
        future.add_done_callback(forget_if_cancelled)
        # wrap_future cancels the concurrent future when the awaiting task is cancelled.
        return await asyncio.wrap_future(future)

    async def shutdown(self) -> None:
        """Refuse new calls and wait for the running and queued ones to finish."""
        with self._lock:
            self._closing = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)
