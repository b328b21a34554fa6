"""Prometheus metrics, one registry per application instance (tests run several apps in one process).

Names start with ``mer_``. Request metrics are labelled with the route *template*
(``/v2/models/{name}/infer``), never the raw path, so a client cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS_S", "ServiceMetrics"]

#: Content-Type of the text exposition format.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds; stages and requests range from milliseconds (features) to about a minute (long songs).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
#: Clips per inference call.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class ServiceMetrics:
    """The service's metrics in their own registry.

    Example:
        >>> m = ServiceMetrics()
        >>> m.stage_seconds.labels(stage="decode").observe(0.12)
        >>> body = m.render()
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "mer_http_requests", "HTTP requests answered.", labels, registry=self.registry
        )
        self.request_seconds = Histogram(
            "mer_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "mer_http_requests_in_flight", "HTTP requests being handled now.", registry=self.registry
        )
        self.stage_seconds = Histogram(
            "mer_stage_duration_seconds",
            "Seconds per processing stage: decode and extract per clip, infer per batch.",
            ("stage",),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mer_batch_size", "Clips per ONNX Runtime call.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_frames = Histogram(
            "mer_batch_padded_frames",
            "Padded frames (clips x longest clip) per ONNX Runtime call.",
            buckets=(1, 16, 61, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
            registry=self.registry,
        )
        self.queued = Gauge(
            "mer_queued",
            "Work waiting: requests for a worker thread (pool), clips for the model (batch).",
            ("queue",),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "mer_model_info",
            "The served model (value 1), with its identity and execution provider as labels.",
            ("name", "version", "provider", "feature_set", "sample_rate"),
            registry=self.registry,
        )
        self.streams_open = Gauge(
            "mer_streams_open", "Live streams (/v1/stream) running now.", registry=self.registry
        )
        self.stream_frames = Counter(
            "mer_stream_frames", "Frames sent to live streams.", registry=self.registry
        )
        self.stream_frame_seconds = Histogram(
            "mer_stream_frame_latency_seconds",
            "From the arrival of the audio that completed a window to its prediction (live streams).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.stream_closes = Counter(
            "mer_stream_closes",
            "Live streams ended, by WebSocket close code.",
            ("code",),
            registry=self.registry,
        )
        self.ready = Gauge("mer_ready", "1 once the model is loaded and warmed up.", registry=self.registry)

    def observe_batch(self, size: int, padded_frames: int, seconds: float) -> None:
        """Record one inference call (a :data:`app.serving.batcher.BatchObserver`)."""
        self.batch_size.observe(size)
        self.batch_frames.observe(padded_frames)
        self.stage_seconds.labels(stage="infer").observe(seconds)

    def track_queues(self, pool: Callable[[], int], batch: Callable[[], int]) -> None:
        """Read the queue lengths from these callables at every scrape."""
        self.queued.labels(queue="pool").set_function(pool)
        self.queued.labels(queue="batch").set_function(batch)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
