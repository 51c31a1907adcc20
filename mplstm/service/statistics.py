"""Per-model inference statistics in Triton's shape (the ModelStatistics RPC).

Cumulative since the process started, as Triton keeps them: requests that succeeded or
failed with their total time, time queued and time in inference, clips inferred
(`inference_count`), batches run (`execution_count`), and per batch size the batches and
their inference time. Fed where the Prometheus metrics are (`ServiceMetrics`), so both
count the same requests.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Duration:
    """How many, and how long in all (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(int(seconds * 1e9), 0)


@dataclass
class ModelStatistics:
    """One model's counters (every version it served)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # clips inferred
    execution_count: int = 0  # inference runs (batches)
    last_inference_ms: int = 0  # epoch ms of the last run; 0: never
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> its runs


class InferenceStatistics:
    """Every model's `ModelStatistics`, created on first use."""

    def __init__(self) -> None:
        self._models: defaultdict[str, ModelStatistics] = defaultdict(ModelStatistics)

    def of(self, model: str) -> ModelStatistics:
        """The statistics of `model` (zeros if it has not been used)."""
        return self._models[model]

    def request_done(self, model: str, seconds: dict[str, float]) -> None:
        """A successful request and its stage times (`queue`, `inference`, `total`)."""
        stats = self._models[model]
        stats.success.add(seconds["total"])
        if "queue" in seconds:
            stats.queue.add(seconds["queue"])
        if "inference" in seconds:
            stats.compute_infer.add(seconds["inference"])

    def request_failed(self, model: str, seconds: float) -> None:
        """A request that ended in an error after `seconds`."""
        self._models[model].fail.add(seconds)

    def batch_ran(self, model: str, rows: int, seconds: float) -> None:
        """One inference run of `rows` clips that took `seconds`."""
        stats = self._models[model]
        stats.inference_count += rows
        stats.execution_count += 1
        stats.last_inference_ms = int(time.time() * 1000)
        stats.batches.setdefault(rows, Duration()).add(seconds)
