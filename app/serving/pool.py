"""A fixed pool of worker threads with a bounded wait queue, and the audio budget of their extraction.

Decoding, feature extraction and the parsing of large bodies run here, off the event loop;
openSMILE and libsndfile release the GIL, so the threads use every core. Beyond ``max_queue`` waiting
calls a request fails at once with :class:`~app.core.errors.OverloadedError` (503 + Retry-After).

The chunks of one long clip's extraction (a chunked feature configuration) spread over the same
threads through :meth:`WorkerPool.chunk_runner`; how that stays fair to other requests is described
there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from app.core.errors import OverloadedError, RequestTimeoutError, ShuttingDownError

__all__ = ["AudioBudget", "PoolChunkRunner", "WorkerPool"]

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
        # The abandonment flag of the call a worker thread is running (read by chunk_runner()).
        self._current = threading.local()
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

        abandoned = threading.Event()

        def call() -> R:
            with self._lock:
                self._waiting -= 1
                self._busy += 1
            self._current.abandoned = abandoned
            try:
                return fn(*args, **kwargs)
            finally:
                self._current.abandoned = None
                with self._lock:
                    self._busy -= 1

        def forget_if_cancelled(f: Future[R]) -> None:
            if f.cancelled():  # never started: call() did not take it off the count
                with self._lock:
                    self._waiting -= 1

        future = self._executor.submit(call)
        future.add_done_callback(forget_if_cancelled)
        try:
            # wrap_future cancels the concurrent future when the awaiting task is cancelled.
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # A call that has started cannot be interrupted, but its chunks can stop being handed out
            # (a timed-out or disconnected 10-minute song frees the pool within one chunk).
            abandoned.set()
            raise

    def chunk_runner(self) -> PoolChunkRunner:
        """A runner that spreads one call's chunks over this pool's threads (see :class:`PoolChunkRunner`).

        Called from inside a call that :meth:`run` started, the runner stops handing out chunks once
        that call's caller has given up (cancelled, timed out).
        """
        abandoned = getattr(self._current, "abandoned", None)
        return PoolChunkRunner(self._executor, self.workers - 1, self._count_busy, abandoned)

    @contextlib.contextmanager
    def _count_busy(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

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


class PoolChunkRunner:
    """Runs the chunks of one clip on the calling worker thread plus at most ``helpers`` others.

    The calling thread (itself a pool worker) takes chunks one at a time until none is left, then
    waits only for chunks other threads have already started, so it can never wait on work stuck in
    the queue behind it (no deadlock however busy the pool is). Each helper is a task on the pool's
    FIFO queue that runs ONE chunk and then, if chunks remain, queues itself again at the back: a
    request that arrived meanwhile runs before the long clip's next chunk, so a long song shares the
    threads with short requests chunk by chunk instead of holding them for its whole length.

    Args:
        executor: The pool's executor.
        helpers: Most tasks the clip may have on the pool at once besides its own thread.
        busy: Context manager counting a running helper as a busy worker (metrics).
        abandoned: Set when nobody waits for the result any more: no further chunk starts, and
            :meth:`map` raises :class:`~app.core.errors.RequestTimeoutError` once the started ones end.
    """

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        helpers: int,
        busy: Callable[[], contextlib.AbstractContextManager[Any]],
        abandoned: threading.Event | None = None,
    ) -> None:
        self._executor = executor
        self._helpers = max(0, helpers)
        self._busy = busy
        self._abandoned = abandoned

    def map(self, fn: Callable[[int], R], count: int) -> list[R]:
        """Return ``[fn(0), ..., fn(count - 1)]``, the calls spread over the pool.

        Raises:
            Exception: The first exception a call raised, after every started call has ended.
        """
        if count <= 0:
            return []
        results: list[Any] = [None] * count
        cond = threading.Condition()
        state = {"next": 0, "done": 0}
        errors: list[BaseException] = []

        def take() -> int | None:
            with cond:
                if self._abandoned is not None and self._abandoned.is_set() and not errors:
                    errors.append(RequestTimeoutError("the request was abandoned; its chunks stopped"))
                if errors or state["next"] >= count:
                    return None
                i = state["next"]
                state["next"] += 1
                return i

        def run(i: int) -> None:
            try:
                results[i] = fn(i)
            except BaseException as exc:  # re-raised in the caller, after the others
                with cond:
                    errors.append(exc)
            finally:
                with cond:
                    state["done"] += 1
                    cond.notify_all()

        def submit() -> bool:
            try:
                self._executor.submit(helper)
            except RuntimeError:  # the executor is shutting down: the caller does the rest
                return False
            return True

        def helper() -> None:
            i = take()
            if i is None:
                return
            with self._busy():
                run(i)
            with cond:
                more = not errors and state["next"] < count
            if more:
                submit()

        for _ in range(min(self._helpers, count - 1)):
            if not submit():
                break
        while (i := take()) is not None:
            run(i)
        # No chunk starts any more (all taken, or an error stopped them): wait for the started ones.
        with cond:
            cond.wait_for(lambda: state["done"] == state["next"])
        if errors:
            raise errors[0]
        return results
