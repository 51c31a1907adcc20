"""The dynamic batcher: one per model, it turns concurrent requests into batches.

Requests wait in a bounded priority queue (Triton's schedule-policy extension: level 1
first, then 2, ...; first come, first served within a level). A batch opens when its
oldest waiting request arrived and closes when `max_batch` clips wait or `max_delay_s`
after that arrival, whichever comes first; it then takes the waiting requests in priority
order. While one batch runs in the inference thread (off the event loop; ONNX Runtime
releases the GIL), the next one gathers in the queue, so under load batches close full
without waiting. Clips of different shape (a different T on the tensor route) are
grouped by shape and run as separate batches. A full queue is refused at once
(`QueueFullError`, 503 + Retry-After) rather than growing latency without bound; a
request whose queue timeout (the `timeout` parameter) passes while it waits is answered
at that moment with `QueueTimeoutError` and never runs; one past its deadline is dropped
before it costs inference.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from prometheus_client import Gauge

from mplstm.inference.backend import InferenceOutput
from mplstm.service.errors import (
    BadTensorError,
    DeadlineExceededError,
    InferenceFailedError,
    QueueTimeoutError,
    model_queue_full,
    model_shutting_down,
    no_answer_in_time,
)
from mplstm.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

Infer = Callable[[np.ndarray, np.ndarray], InferenceOutput]


@dataclass(frozen=True)
class BatchResult:
    """One request's rows of a batch's output, and where its time went."""

    logits: np.ndarray  # float32 [n, classes]
    probabilities: np.ndarray  # float32 [n, classes]
    queue_s: float  # enqueued -> its batch started
    inference_s: float  # its batch's inference time
    batch_size: int  # clips in the batch it ran in
    embedding: np.ndarray | None = None  # float32 [n, E], models with an embedding output


@dataclass(eq=False)
class _Pending:
    clip: np.ndarray  # uint8 [n, V, T, C, H, W]
    view_mask: np.ndarray  # bool [n, V]
    future: asyncio.Future[BatchResult]
    enqueued: float  # loop time
    deadline: float  # loop time
    level: int  # priority level, 1 first
    order: int  # arrival order, ties within a level
    queued: bool = True  # still in the queue (not taken into a batch)
    expiry: asyncio.TimerHandle | None = None  # the queue timeout, while queued

    @property
    def rows(self) -> int:
        return self.clip.shape[0]

    def __lt__(self, other: _Pending) -> bool:
        return (self.level, self.order) < (other.level, other.order)


class DynamicBatcher:
    """Batches `infer(clip, view_mask)` calls for one model; start, submit, stop."""

    def __init__(
        self,
        model: str,
        infer: Infer,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        metrics: ServiceMetrics,
        default_level: int = 1,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.default_level = default_level
        self._infer = infer
        self._max_delay_s = max_delay_s
        self._max_queue = max_queue
        self._heap: list[_Pending] = []
        self._arrivals = itertools.count()
        self._changed = asyncio.Event()
        self._metrics = metrics
        # One thread: batches of a model run one after another; the backend itself uses
        # every core for one batch.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{model}")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"batcher-{self.model}"
        )

    async def submit(
        self,
        clip: np.ndarray,
        view_mask: np.ndarray,
        *,
        timeout_s: float,
        level: int | None = None,
        queue_timeout_s: float | None = None,
    ) -> BatchResult:
        """Queue clips [n, V, T, C, H, W] (n <= max_batch) and wait for their rows of a batch.

        `level`: priority level (1 first; None: the default). `queue_timeout_s`: how long
        the request may wait for its batch to start; past it, `QueueTimeoutError`.
        """
        if self._closing:
            raise model_shutting_down(self.model)
        if clip.shape[0] > self.max_batch:
            raise BadTensorError(
                f"batch of {clip.shape[0]} clips exceeds this model's max_batch {self.max_batch}"
            )
        if len(self._heap) >= self._max_queue:
            raise model_queue_full(self.model, self._max_queue)
        loop = asyncio.get_running_loop()
        now = loop.time()
        item = _Pending(
            clip,
            view_mask,
            loop.create_future(),
            now,
            now + timeout_s,
            self.default_level if level is None else level,
            next(self._arrivals),
        )
        if queue_timeout_s is not None:
            item.expiry = loop.call_later(queue_timeout_s, self._expire, item, queue_timeout_s)
        heapq.heappush(self._heap, item)
        self._changed.set()
        # Pending = waiting for inference, in the queue or in the batch being gathered.
        depth = self._metrics.queue_depth.labels(self.model)
        depth.inc()
        item.future.add_done_callback(lambda _: self._settled(item, depth))
        try:
            return await asyncio.wait_for(item.future, timeout_s)
        except TimeoutError:
            raise no_answer_in_time(self.model, timeout_s) from None

    async def stop(self) -> None:
        """Refuse new requests, finish every queued one, then stop the loop."""
        if self._task is None:
            return
        self._closing = True
        self._changed.set()
        await self._task
        self._executor.shutdown(wait=True)
        self._task = None

    def _expire(self, item: _Pending, timeout_s: float) -> None:
        if item.queued and not item.future.done():
            item.future.set_exception(
                QueueTimeoutError(
                    f"request waited longer than its timeout of {timeout_s * 1e6:.0f} us in "
                    f"the queue of model {self.model!r}; it was not run"
                )
            )

    def _settled(self, item: _Pending, depth: Gauge) -> None:
        """A request's answer is set (or it gave up): out of the queue and the gauge."""
        depth.dec()
        if item.expiry is not None:
            item.expiry.cancel()
        if item.queued:
            # Expired or abandoned while waiting: it leaves the queue now, so it holds no
            # place in the bound.
            item.queued = False
            self._heap.remove(item)
            heapq.heapify(self._heap)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._heap or not self._closing:
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            # The batch opened when its oldest waiting request arrived.
            close_at = min(item.enqueued for item in self._heap) + self._max_delay_s
            while not self._closing and sum(i.rows for i in self._heap) < self.max_batch:
                wait = close_at - loop.time()
                if wait <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                except TimeoutError:
                    break
            for group in self._groups(self._take()):
                await self._run(group)

    def _take(self) -> list[_Pending]:
        """The waiting requests in priority order, up to max_batch clips (at least one)."""
        batch: list[_Pending] = []
        rows = 0
        while self._heap and (not batch or rows + self._heap[0].rows <= self.max_batch):
            item = heapq.heappop(self._heap)
            item.queued = False
            if item.expiry is not None:
                item.expiry.cancel()
            batch.append(item)
            rows += item.rows
        return batch

    def _groups(self, batch: list[_Pending]) -> list[list[_Pending]]:
        """Live requests grouped by clip shape, each group cut to at most max_batch clips."""
        now = asyncio.get_running_loop().time()
        by_shape: dict[tuple[int, ...], list[list[_Pending]]] = defaultdict(lambda: [[]])
        for item in batch:
            if item.future.done():  # the client gave up (timeout, disconnect)
                continue
            if now > item.deadline:
                item.future.set_exception(
                    DeadlineExceededError(f"request waited past its deadline for {self.model!r}")
                )
                continue
            chunks = by_shape[item.clip.shape[1:]]
            if sum(i.rows for i in chunks[-1]) + item.rows > self.max_batch:
                chunks.append([])
            chunks[-1].append(item)
        return [chunk for chunks in by_shape.values() for chunk in chunks if chunk]

    async def _run(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            output, inference_s = await loop.run_in_executor(
                self._executor, self._infer_group, group
            )
        except Exception as exc:
            log.exception("%s: inference failed on a batch of %d requests", self.model, len(group))
            for item in group:
                if not item.future.done():
                    item.future.set_exception(
                        InferenceFailedError(f"inference failed: {type(exc).__name__}: {exc}")
                    )
            return
        rows = sum(item.rows for item in group)
        self._metrics.observe_batch(self.model, rows, inference_s)
        offset = 0
        for item in group:
            part = slice(offset, offset + item.rows)
            offset += item.rows
            if not item.future.done():
                item.future.set_result(
                    BatchResult(
                        output.logits[part],
                        output.probabilities[part],
                        queue_s=start - item.enqueued,
                        inference_s=inference_s,
                        batch_size=rows,
                        embedding=None if output.embedding is None else output.embedding[part],
                    )
                )

    def _infer_group(self, group: list[_Pending]) -> tuple[InferenceOutput, float]:
        # Runs in the inference thread, so the concatenation copy stays off the event loop.
        clip = group[0].clip if len(group) == 1 else np.concatenate([i.clip for i in group])
        mask = (
            group[0].view_mask if len(group) == 1 else np.concatenate([i.view_mask for i in group])
        )
        start = time.perf_counter()
        output = self._infer(clip, mask)
        return output, time.perf_counter() - start
