"""Live streams without HTTP: PCM pieces in, one prediction per completed 500 ms window out.

:class:`StreamHub` bounds how many streams run at once and opens :class:`StreamSession` objects; a
session owns one :class:`~app.core.stream.LiveExtractor` (its openSMILE instance and thread) and the
step model's state. Each completed window's features go through the step graph on openSMILE's thread
(about a millisecond) and the frame is handed to the event loop, in order, through a queue that can
never hold more than the duration limit's frames. Pushing runs in a worker thread, one piece at a time
per stream, so a client that sends faster than openSMILE computes is slowed by TCP, not buffered.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.emotion import summarise
from app.core.errors import AudioTooLongError, ModelNotReadyError, OverloadedError
from app.core.features import LOOKAHEAD_S, FeatureExtractor
from app.core.step import StepModel
from app.core.stream import LiveExtractor, StreamFormat
from app.core.types import FloatArray
from app.serving.metrics import ServiceMetrics
from app.settings import Settings

__all__ = ["StreamFrame", "StreamHub", "StreamSession"]


@dataclass(frozen=True)
class StreamFrame:
    """One window's prediction, as sent to the client."""

    index: int
    start_s: float
    end_s: float
    arousal: float
    valence: float

    def to_json(self) -> dict[str, Any]:
        """The frame message."""
        return {
            "type": "frame",
            "index": self.index,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "arousal": self.arousal,
            "valence": self.valence,
        }


class StreamHub:
    """Opens streams within the configured bound.

    Args:
        step: The model's step graph (``None``: the model has none, streams are refused).
        extractor: The service's feature extractor.
        settings: The stream limits.
        metrics: Streams open, frames sent, per-frame latency.
        step_problem: Why the model's step graph is not loaded, said to clients that open a stream.
    """

    def __init__(
        self,
        step: StepModel | None,
        extractor: FeatureExtractor,
        settings: Settings,
        metrics: ServiceMetrics,
        step_problem: str | None = None,
    ) -> None:
        self.step = step
        self.step_problem = step_problem
        self.extractor = extractor
        self.settings = settings
        self.metrics = metrics
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        """Streams running now."""
        return self._open

    def open(self, fmt: StreamFormat) -> StreamSession:
        """Start a stream.

        Raises:
            ModelNotReadyError: If the model has no step graph.
            OverloadedError: If ``stream_max_concurrent`` streams are running.
        """
        if self.step is None:
            raise ModelNotReadyError(
                self.step_problem or "this model has no step graph: live streams are unavailable"
            )
        with self._lock:
            if self._open >= self.settings.stream_max_concurrent:
                raise OverloadedError(f"{self._open} streams are running, the most this server takes")
            self._open += 1
        self.metrics.streams_open.inc()
        try:
            return StreamSession(self, fmt, asyncio.get_running_loop())
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
        self.metrics.streams_open.dec()


class StreamSession:
    """One live stream: :meth:`push` pieces, read frames from :attr:`frames`, :meth:`finish` or :meth:`close`.

    Created by :meth:`StreamHub.open` inside the event loop.
    """

    def __init__(self, hub: StreamHub, fmt: StreamFormat, loop: asyncio.AbstractEventLoop) -> None:
        assert hub.step is not None
        self._hub = hub
        self._step = hub.step
        self._state = hub.step.initial_state()
        self._loop = loop
        self.format = fmt
        cfg = hub.extractor.config
        self._window = cfg.window_samples
        self._lookahead = math.ceil(LOOKAHEAD_S * cfg.sample_rate)
        self._hop = cfg.hop_s
        self.max_frames = math.floor(hub.settings.stream_max_duration_s / cfg.hop_s) + 1
        #: Frames for the event loop, in order; ``None`` after the last one. Holds at most every frame
        #: of a stream of the longest allowed duration.
        self.frames: asyncio.Queue[StreamFrame | None] = asyncio.Queue(maxsize=self.max_frames + 1)
        self._emotion: list[FloatArray] = []
        # (analysis samples handed to openSMILE after a push, when that push arrived): the latency of a
        # frame runs from the arrival of the piece that completed its window.
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()
        self._arrivals_lock = threading.Lock()
        self._closed = False
        self.started = time.monotonic()
        self._live = LiveExtractor(hub.extractor, fmt, self._on_frame)

    @property
    def duration_s(self) -> float:
        """Seconds of audio received."""
        return self._live.duration_s

    def _on_frame(self, index: int, features: FloatArray) -> None:
        # On openSMILE's thread, in window order.
        y, self._state = self._step.step(features, self._state)
        self._emotion.append(y)
        end_sample = (index + 1) * self._window
        arrived = None
        with self._arrivals_lock:
            while self._arrivals and self._arrivals[0][0] < end_sample:
                self._arrivals.popleft()
            if self._arrivals:
                arrived = self._arrivals[0][1]
        if arrived is not None:
            self._hub.metrics.stream_frame_seconds.observe(time.perf_counter() - arrived)
        frame = StreamFrame(
            index=index,
            start_s=round(index * self._hop, 6),
            end_s=round((index + 1) * self._hop, 6),
            arousal=float(y[0]),
            valence=float(y[1]),
        )
        self._loop.call_soon_threadsafe(self.frames.put_nowait, frame)

    async def push(self, data: bytes) -> None:
        """Feed a piece of raw PCM (in a worker thread).

        Raises:
            AudioTooLongError: Once the stream passes ``stream_max_duration_s``.
            CorruptAudioError: On non-finite float samples.
        """
        limit = self._hub.settings.stream_max_duration_s
        frames_after = self._live.input_frames + len(data) // self.format.frame_bytes
        if frames_after / self.format.sample_rate > limit:
            raise AudioTooLongError(f"the stream passed its limit of {limit:g} s of audio")
        arrived = time.perf_counter()
        await asyncio.to_thread(self._push, data, arrived)

    def _push(self, data: bytes, arrived: float) -> None:
        before = self._live.samples
        with self._arrivals_lock:
            # Registered before the write: openSMILE may emit the window while the write returns.
            expected = before + math.ceil(len(data) / self.format.frame_bytes * self._ratio()) + 1
            self._arrivals.append((expected, arrived))
        self._live.push(data)

    def _ratio(self) -> float:
        return self._hub.extractor.config.sample_rate / self.format.sample_rate

    async def finish(self) -> dict[str, Any]:
        """End the stream: the last frames are queued, then ``None``; returns the summary message."""
        await asyncio.to_thread(self._live.finish)
        self._release()
        self._loop.call_soon_threadsafe(self.frames.put_nowait, None)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """The summary message: frames, seconds, and the clip summary of the frames so far."""
        out: dict[str, Any] = {
            "type": "summary",
            "frames": len(self._emotion),
            "duration_s": round(self.duration_s, 6),
            "seconds_open": round(time.monotonic() - self.started, 3),
        }
        if self._emotion:
            s = summarise(np.stack(self._emotion))
            out["summary"] = {
                "mean": s.mean,
                "std": s.std,
                "quadrant": s.quadrant,
                "quadrant_label": s.quadrant_label,
            }
        return out

    async def close(self) -> None:
        """Stop the stream (idempotent): frames not yet computed are dropped."""
        await asyncio.to_thread(self._live.close)
        self._release()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._release()
