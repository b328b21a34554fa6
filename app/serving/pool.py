"""A fixed pool of worker threads with a bounded wait queue, and the audio budget of their extraction.

Decoding, feature extraction and the parsing of large bodies run here, off the event loop;
openSMILE and libsndfile release the GIL, so the threads use every core. Beyond ``max_queue`` waiting
calls a request fails at once with :class:`~app.core.errors.OverloadedError` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from app.core.errors import OverloadedError, ShuttingDownError

__all__ = ["AudioBudget", "WorkerPool"]

P = ParamSpec("P")
R = TypeVar("R")


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


class AudioBudget:
    """A weighted semaphore over seconds of audio, for the worker threads' feature extraction.

    openSMILE holds its intermediate data for a whole signal at once (about 0.7 MB per second of
    16 kHz audio for ComParE_2016), so the memory extraction needs grows with the seconds being
    extracted, not with the number of requests. A worker acquires a clip's seconds before extracting
    and waits while the budget is used up; a clip longer than the whole budget runs when nothing else
    holds any, alone. Waiting happens in the worker thread (the event loop is never blocked); the
    request timeout still applies to the waiting request.

    Args:
        seconds: Seconds of audio that may be extracted at once.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("the audio budget must be positive")
        self.seconds = seconds
        self.held = 0.0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, seconds: float) -> Iterator[None]:
        """Hold ``seconds`` of the budget for the duration of the block."""
        with self._cond:
            self._cond.wait_for(lambda: self.held == 0.0 or self.held + seconds <= self.seconds)
            self.held += seconds
        try:
            yield
        finally:
            with self._cond:
                self.held -= seconds
                if self.held < 1e-9:
                    self.held = 0.0
                self._cond.notify_all()
