"""What a request does once parsed: decode, batch, infer, and account for the time.

Route handlers call these and stay thin; the batcher and backends do the work.
"""

from __future__ import annotations

import asyncio
import mmap
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from fastapi import Request

from mplstm.core.camera_checks import ViewFailure
from mplstm.core.errors import CameraFailedError
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.ranking import top_k
from mplstm.service.batcher import BatchResult
from mplstm.service.bodies import BodyBudget, BodyLimits, budgeted, infer_body
from mplstm.service.cameras import checked as cameras_checked
from mplstm.service.cameras import count_checked, dropped_views, expected_accuracy
from mplstm.service.connections import HttpMetrics
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
    budget: BodyBudget  # request bodies in memory, server-wide
    http_metrics: HttpMetrics

    def budgeted(self, request: Request) -> AbstractAsyncContextManager[Request]:
        """`request` with its body held against the budget (the /v1 upload)."""
        return budgeted(request, self.budget, timeout_s=self.settings.request_timeout_s)

    def infer_body(self, request: Request) -> AbstractAsyncContextManager[bytearray | mmap.mmap]:
        """A /v2 body read whole within its limits, held against the budget."""
        limits = BodyLimits(self.settings.max_upload_bytes, self.settings.max_json_bytes)
        return infer_body(request, self.budget, limits, timeout_s=self.settings.request_timeout_s)


@contextmanager
def counted(services: Services, model: str, route: str, protocol: str = "http") -> Iterator[None]:
    """Count one request by outcome: "success", or the error code it ended with."""
    metrics = services.metrics
    # Only served names become label values: a client must not create series at will.
    model = model if services.repository.serves(model) else "_unknown"
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        outcome = getattr(exc, "code", None) or type(exc).__name__
        metrics.requests.labels(model, route, str(outcome), protocol).inc()
        if model != "_unknown":
            metrics.statistics.request_failed(model, time.perf_counter() - start)
        raise
    metrics.requests.labels(model, route, "success", protocol).inc()


@dataclass(frozen=True)
class ScoredClip:
    """One clip's probabilities (and embedding), the views it used and dropped, and each
    stage's seconds."""

    view_names: tuple[str, ...]
    view_mask: np.ndarray
    probabilities: np.ndarray
    seconds: dict[str, float]
    views_dropped: tuple[ViewFailure, ...] = ()
    embedding: np.ndarray | None = None  # models with an embedding output

    @property
    def views_used(self) -> list[str]:
        """The views sent and used, in model order."""
        return [n for n, used in zip(self.view_names, self.view_mask, strict=True) if used]

    def timings_ms(self) -> Timings:
        return Timings(**{k: round(v * 1000, 3) for k, v in self.seconds.items()})


@dataclass(frozen=True)
class CameraPolicy:
    """A request's camera checks: on or off, and the accuracy floor of the views left."""

    checks: bool = True
    min_expected_accuracy: float | None = None


async def score_views(
    model: LoadedModel,
    views: Mapping[str, BinaryIO],
    *,
    workers: VideoWorkers,
    metrics: ServiceMetrics,
    timeout_s: float,
    cameras: CameraPolicy = CameraPolicy(),
) -> ScoredClip:
    """Uploaded views of one clip, camera-checked, decoded and inferred where the model's
    placement says: the one video path of predict and of the gallery's enrol, identify and
    verify."""
    config = cameras_checked(model.preprocess, cameras.checks)
    try:
        if model.worker_queue is not None:
            scored = await _in_workers(model.worker_queue, views, config, timeout_s)
        else:
            scored = await _through_batcher(model, views, config, workers, timeout_s)
    except CameraFailedError as exc:
        count_checked(metrics, model.name, exc.failures)
        raise
    if cameras.checks:
        count_checked(metrics, model.name, scored.views_dropped)
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
    cameras: CameraPolicy = CameraPolicy(),
) -> PredictResponse:
    """Uploaded views of one clip -> the model's top-k predictions, with per-stage timings."""
    scored = await score_views(
        model, views, workers=workers, metrics=metrics, timeout_s=timeout_s, cameras=cameras
    )
    expected = expected_accuracy(
        model.name,
        model.manifest,
        scored.views_used,
        scored.views_dropped,
        cameras.min_expected_accuracy,
    )
    return PredictResponse(
        model=ModelRef(name=model.name, version=model.version),
        task=model.manifest.task,
        predictions=top_predictions(scored.probabilities, model.manifest.labels, top_k),
        views_used=scored.views_used,
        views_dropped=dropped_views(scored.views_dropped),
        expected_accuracy=expected,
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
    return ScoredClip(
        done.view_names,
        done.view_mask,
        done.probabilities,
        seconds,
        done.views_dropped,
        done.embedding,
    )


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
    return ScoredClip(
        decoded.view_names,
        view_mask,
        result.probabilities[0],
        seconds,
        decoded.views_dropped,
        embedding,
    )


async def infer_tensors(
    model: LoadedModel,
    clip: np.ndarray,
    view_mask: np.ndarray,
    *,
    metrics: ServiceMetrics,
    timeout_s: float,
    protocol: str = "http",
    level: int | None = None,
    queue_timeout_s: float | None = None,
) -> BatchResult:
    """Ready-made tensors (v2, REST or gRPC) through the model's batcher.

    `level` and `queue_timeout_s` are the request's schedule policy (`DynamicBatcher.submit`).
    """
    start = time.perf_counter()
    result = await model.batcher.submit(
        clip, view_mask, timeout_s=timeout_s, level=level, queue_timeout_s=queue_timeout_s
    )
    metrics.observe_stages(
        model.name,
        {
            "queue": result.queue_s,
            "inference": result.inference_s,
            "total": time.perf_counter() - start,
        },
        protocol,
    )
    return result


def top_predictions(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[Prediction]:
    """The k most probable labels, best first (ties in label order)."""
    return [
        Prediction(label=label, score=score) for label, score in top_k(probabilities, labels, k)
    ]
