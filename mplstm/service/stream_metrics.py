"""Prometheus metrics of live sessions (registered in the service's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds from the frame that completed a step to its update leaving the server.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class StreamMetrics:
    """Active sessions, steps, batch sizes, latency, masked steps, closes, buffered frames."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge(
            "mplstm_stream_sessions", "Live sessions open.", ("model",), registry=registry
        )
        self.steps = Counter(
            "mplstm_stream_steps", "Steps run for live sessions.", ("model",), registry=registry
        )
        self.batch_size = Histogram(
            "mplstm_stream_batch_size",
            "Sessions' steps per inference run (continuous batching).",
            ("model",),
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "mplstm_stream_update_latency_seconds",
            "From the frame that completed a step to its update or final message being sent.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.masked_steps = Counter(
            "mplstm_stream_masked_steps",
            "Steps run with a view masked (silent camera), by view.",
            ("model", "view"),
            registry=registry,
        )
        self.closed = Counter(
            "mplstm_stream_closed",
            "Live sessions ended, by WebSocket close code.",
            ("model", "code"),
            registry=registry,
        )
        self.buffered = Gauge(
            "mplstm_stream_buffered_frames",
            "Frames held in live sessions' jitter buffers.",
            ("model",),
            registry=registry,
        )
