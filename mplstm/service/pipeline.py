"""What a request does once parsed: decode, batch, infer, and account for the time.

Route handlers call these and stay thin; the batcher and backends do the work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.ranking import top_k
from mplstm.service.batcher import BatchResult
from mplstm.service.errors import DeadlineExceededError
from mplstm.service.metrics import ServiceMetrics
from mplstm.service.repository import LoadedModel, ModelRepository
from mplstm.service.schemas import ModelRef, Prediction, PredictResponse, Timings
from mplstm.service.settings import Settings
from mplstm.service.video_workers import VideoWorkers, WorkerQueue


@dataclass(frozen=True)
class Services:
    """What the routes need, built once at start-up and shared through `app.state`."""

    settings: Settings
    repository: ModelRepository
    workers: VideoWorkers
    metrics: ServiceMetrics


@contextmanager
def counted(services: Services, model: str, route: str) -> Iterator[None]:
    """Count one request by outcome: "success", or the error code it ended with."""
    metrics = services.metrics
    # Only served names become label values: a client must not create series at will.
    model = model if services.repository.serves(model) else "_unknown"
    try:
        yield
    except BaseException as exc:
        outcome = getattr(exc, "code", None) or type(exc).__name__
        metrics.requests.labels(model, route, str(outcome)).inc()
        raise
    metrics.requests.labels(model, route, "success").inc()


@dataclass(frozen=True)
class ScoredClip:
    """One clip's probabilities (and embedding), the views it used, and each stage's seconds."""

    view_names: tuple[str, ...]
    view_mask: np.ndarray
    probabilities: np.ndarray
    seconds: dict[str, float]
    embedding: np.ndarray | None = None  # models with an embedding output

    @property
    def views_used(self) -> list[str]:
        """The views sent and used, in model order."""
        return [n for n, used in zip(self.view_names, self.view_mask, strict=True) if used]

    def timings_ms(self) -> Timings:
        return Timings(**{k: round(v * 1000, 3) for k, v in self.seconds.items()})


async def score_views(
    model: LoadedModel,
    views: Mapping[str, BinaryIO],
    *,
    workers: VideoWorkers,
    metrics: ServiceMetrics,
    timeout_s: float,
) -> ScoredClip:
    """Uploaded views of one clip, decoded and inferred where the model's placement says:
    the one video path of predict and of the gallery's enrol, identify and verify."""
    config = model.preprocess
    if model.worker_queue is not None:
        scored = await _in_workers(model.worker_queue, views, config, timeout_s)
    else:
        scored = await _through_batcher(model, views, config, workers, timeout_s)
    metrics.observe_stages(model.name, scored.seconds)
    return scored


async def predict_views(
    model: LoadedModel,
    views: Mapping[str, BinaryIO],
    *,
    top_k: int,
    request_id: str,
    workers: VideoWorkers,
    metrics: ServiceMetrics,
    timeout_s: float,
) -> PredictResponse:
    """Uploaded views of one clip -> the model's top-k predictions, with per-stage timings."""
    scored = await score_views(model, views, workers=workers, metrics=metrics, timeout_s=timeout_s)
    return PredictResponse(
        model=ModelRef(name=model.name, version=model.version),
        task=model.manifest.task,
        predictions=top_predictions(scored.probabilities, model.manifest.labels, top_k),
        views_used=scored.views_used,
        timings_ms=scored.timings_ms(),
        request_id=request_id,
    )


async def _in_workers(
    queue: WorkerQueue,
    views: Mapping[str, BinaryIO],
    config: PreprocessConfig,
    timeout_s: float,
) -> ScoredClip:
    start = time.perf_counter()
    done = await queue.predict(views, config, timeout_s=timeout_s)
    total = time.perf_counter() - start
    # Queue: waiting for a free worker, and the hand-over both ways.
    queue = max(total - done.decode_s - done.inference_s, 0.0)
    seconds = {
        "decode": done.decode_s,
        "queue": queue,
        "inference": done.inference_s,
        "total": total,
    }
    assert done.view_mask is not None and done.probabilities is not None  # no error
    return ScoredClip(done.view_names, done.view_mask, done.probabilities, seconds, done.embedding)


async def _through_batcher(
    model: LoadedModel,
    views: Mapping[str, BinaryIO],
    config: PreprocessConfig,
    workers: VideoWorkers,
    timeout_s: float,
) -> ScoredClip:
    start = time.perf_counter()
    try:
        decoded = await asyncio.wait_for(workers.decode(views, config), timeout_s)
    except TimeoutError:
        raise DeadlineExceededError(
            f"decoding took longer than the {timeout_s:.1f} s request deadline"
        ) from None
    frames, view_mask = decoded.clip()
    took = time.perf_counter() - start
    result = await model.batcher.submit(
        frames[None], view_mask[None], timeout_s=max(timeout_s - took, 1e-3)
    )
    seconds = {
        "decode": took,
        "queue": result.queue_s,
        "inference": result.inference_s,
        "total": time.perf_counter() - start,
    }
    embedding = None if result.embedding is None else result.embedding[0]
    return ScoredClip(decoded.view_names, view_mask, result.probabilities[0], seconds, embedding)


async def infer_tensors(
    model: LoadedModel,
    clip: np.ndarray,
    view_mask: np.ndarray,
    *,
    metrics: ServiceMetrics,
    timeout_s: float,
) -> BatchResult:
    """Ready-made tensors (the v2 route) through the model's batcher."""
    start = time.perf_counter()
    result = await model.batcher.submit(clip, view_mask, timeout_s=timeout_s)
    metrics.observe_stages(
        model.name,
        {
            "queue": result.queue_s,
            "inference": result.inference_s,
            "total": time.perf_counter() - start,
        },
    )
    return result


def top_predictions(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[Prediction]:
    """The k most probable labels, best first (ties in label order)."""
    return [
        Prediction(label=label, score=score) for label, score in top_k(probabilities, labels, k)
    ]
