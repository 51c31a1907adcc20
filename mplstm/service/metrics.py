"""Prometheus metrics, one registry per app, named in the spirit of Triton's `nv_inference_*`.

Per app (not the global default registry) so that several apps in one process, as in
tests, do not share or clash on counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mplstm.core.camera_checks import REASONS
from mplstm.service.statistics import InferenceStatistics
from mplstm.service.stream_metrics import StreamMetrics

STAGES = ("decode", "queue", "inference", "total")
# Seconds: from a fraction of a millisecond (a cached tiny batch) to a slow 30 s request.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Counters, histograms and gauges of one service instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nv_inference_requests",
            "Inference requests by model, route, outcome (success or an error code) and "
            "protocol (http or grpc).",
            ("model", "route", "outcome", "protocol"),
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "nv_inference_stage_duration_seconds",
            "Time per request in each stage: decode, queue, inference, total; by protocol.",
            ("model", "stage", "protocol"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "nv_inference_batch_size",
            "Clips per inference run: a dynamic batch, or 1 where a decode worker infers its clip.",
            ("model",),
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "nv_inference_pending_request_count",
            "Requests waiting for inference: queued, or in the batch being gathered.",
            ("model",),
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "nv_model_ready",
            "1 while the model (at this version) is loaded, warmed up and serving.",
            ("model", "version"),
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "nv_models_loaded", "Models loaded and serving.", registry=self.registry
        )
        # The same requests in Triton's per-model shape (the gRPC ModelStatistics RPC).
        self.statistics = InferenceStatistics()
        self.camera_checked_clips = Counter(
            "mplstm_camera_checked_clips",
            "Video clips whose cameras were checked (the denominator of view drops).",
            ("model",),
            registry=self.registry,
        )
        self.views_dropped = Counter(
            "mplstm_view_dropped",
            "Views that failed a camera check, by camera and reason: masked, or refused "
            "(camera_failed) where the model needs every view.",
            ("model", "view", "reason"),
            registry=self.registry,
        )
        self.stream = StreamMetrics(self.registry)  # live sessions (docs/streaming.md)

    def observe_stages(self, model: str, seconds: dict[str, float], protocol: str = "http") -> None:
        """Record one successful request's per-stage times (seconds)."""
        for stage, value in seconds.items():
            self.stage_seconds.labels(model, stage, protocol).observe(value)
        self.statistics.request_done(model, seconds)

    def observe_batch(self, model: str, rows: int, seconds: float) -> None:
        """Record one inference run of `rows` clips that took `seconds`."""
        self.batch_size.labels(model).observe(rows)
        self.statistics.batch_ran(model, rows, seconds)

    def watch_cameras(self, model: str, views: tuple[str, ...]) -> None:
        """Every camera's drop counters at zero, so that rates exist before a first drop."""
        self.camera_checked_clips.labels(model)
        for view in views:
            for reason in REASONS:
                self.views_dropped.labels(model, view, reason)

    def render(self) -> bytes:
        """The text exposition format for `GET /metrics`."""
        return generate_latest(self.registry)
