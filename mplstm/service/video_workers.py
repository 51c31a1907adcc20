"""The video route in the worker processes: uploads read within a bound, clips decoded or scored.

One pool (`mplstm.core.worker_pool`) serves every model. An upload is read into memory
only when a worker is about to take it, so at most `2 * workers` uploads are held as
bytes at once. Where a model's inference runs in the workers (`Placement.WORKERS`, a
CPU backend), `WorkerQueue` gives its video route what the dynamic batcher gives the
main process: a queue bound (503 + Retry-After), the request deadline, refusal while
shutting down, and the pending-requests gauge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, TypeVar

from mplstm.core.cpus import usable_cpus
from mplstm.core.limits import DecodeLimits
from mplstm.core.package import ModelPackage
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.worker_pool import WorkerCrashedError, WorkerPool
from mplstm.inference.backend import BackendUnavailableError
from mplstm.inference.tasks import (
    Decoded,
    InferenceError,
    Scored,
    decode,
    decode_and_infer,
    decoder_crashed,
    warm_up_worker,
)
from mplstm.service.errors import (
    InferenceFailedError,
    model_queue_full,
    model_shutting_down,
    no_answer_in_time,
)
from mplstm.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class VideoWorkers:
    """The service's worker processes, shared by every model, under its decode limits."""

    def __init__(self, pool: WorkerPool, limits: DecodeLimits) -> None:
        self.limits = limits
        self._pool = pool
        self._slots = asyncio.Semaphore(2 * pool.workers)

    @property
    def workers(self) -> int:
        """Worker processes in the pool."""
        return self._pool.workers

    @classmethod
    async def open(cls, workers: int, limits: DecodeLimits) -> VideoWorkers:
        """Spawn `workers` processes (0: one per usable CPU)."""
        return cls(await WorkerPool(workers or usable_cpus()).start(), limits)

    async def decode(self, views: Mapping[str, BinaryIO], config: PreprocessConfig) -> Decoded:
        """The clip decoded in a worker (its decoding error, if any, inside)."""
        return await self.run(decode, views, config)

    async def run(
        self,
        fn: Callable[..., T],
        views: Mapping[str, BinaryIO],
        config: PreprocessConfig,
        *args: Any,
    ) -> T:
        """`fn(view bytes, config, *args)` in a worker, `config` under the decode limits.

        A clip that kills its worker each time it runs is refused as corrupt (422).
        """
        config = _under(config, self.limits)
        async with self._slots:
            # Spooled to disk (over a MiB) is read off the event loop; in memory, no thread hop.
            if all(_in_memory(source) for source in views.values()):
                data = _read_all(views)
            else:
                data = await asyncio.to_thread(_read_all, views)
            try:
                return await self._pool.submit(fn, data, config, *args)
            except WorkerCrashedError:
                raise decoder_crashed("send them again") from None

    async def run_on_each(self, fn: Callable[..., T], *args: Any) -> list[T]:
        """`fn(*args)` once in every worker."""
        return await self._pool.run_on_each(fn, *args)

    async def close(self) -> None:
        """Stop the workers once their tasks are done."""
        await self._pool.close()


class WorkerQueue:
    """One model's video route with inference in the workers: admission, deadline, metrics."""

    def __init__(
        self,
        model: str,
        package: ModelPackage,
        workers: VideoWorkers,
        *,
        threads: int,
        sessions_kept: Callable[[], int],
        max_queue: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.model = model
        self._package = package
        self._workers = workers
        self._threads = threads
        self._sessions_kept = sessions_kept
        self._max_queue = max_queue
        self._metrics = metrics
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    async def warm_up(self) -> None:
        """Open the model in every worker now rather than on its first request there."""
        try:
            await self._workers.run_on_each(
                warm_up_worker, self._package, self._threads, self._sessions_kept()
            )
        except Exception as exc:
            raise BackendUnavailableError(f"warm-up in the decode workers failed: {exc}") from exc

    async def predict(
        self, views: Mapping[str, BinaryIO], config: PreprocessConfig, *, timeout_s: float
    ) -> Scored:
        """Decode and infer one clip in a worker; 503 when `max_queue` requests wait already."""
        if self._closing:
            raise model_shutting_down(self.model)
        if self._pending >= self._max_queue:
            raise model_queue_full(self.model, self._max_queue)
        depth = self._metrics.queue_depth.labels(self.model)
        self._pending += 1
        self._idle.clear()
        depth.inc()
        try:
            async with asyncio.timeout(timeout_s):
                (scored,) = await self._workers.run(
                    _one_clip, views, config, self._package, self._threads, self._sessions_kept()
                )
        except TimeoutError:
            raise no_answer_in_time(self.model, timeout_s) from None
        except InferenceError as exc:
            log.error("%s: inference failed in a decode worker: %s", self.model, exc)
            raise InferenceFailedError(f"inference failed: {exc}") from None
        finally:
            self._pending -= 1
            depth.dec()
            if not self._pending:
                self._idle.set()
        scored.raise_error()
        self._metrics.observe_batch(self.model, 1, scored.inference_s)
        return scored

    async def stop(self) -> None:
        """Refuse new requests and wait for the ones in flight."""
        self._closing = True
        await self._idle.wait()


def _one_clip(
    data: Mapping[str, bytes],
    config: PreprocessConfig,
    package: ModelPackage,
    threads: int,
    keep: int,
) -> list[Scored]:
    # In a worker: the route's one clip as a batch of one.
    return decode_and_infer([data], config, package, threads, keep)


@functools.lru_cache(maxsize=64)
def _under(config: PreprocessConfig, limits: DecodeLimits) -> PreprocessConfig:
    # Cached: a model's config is the same for every request, and building one validates it.
    return dataclasses.replace(config, limits=limits)


def _read_all(views: Mapping[str, BinaryIO]) -> dict[str, bytes]:
    """Every view's bytes, ready to pickle across to a worker."""
    return {name: source.read() for name, source in views.items()}


def _in_memory(source: BinaryIO) -> bool:
    # A SpooledTemporaryFile not yet rolled over to disk (what Starlette checks too).
    return not getattr(source, "_rolled", True)
