"""Decoding off the event loop: uploaded views -> a `Clip`, in decode worker processes.

Processes, not threads (`core.worker_processes` says why): on the 2-core dev host the
video path served 53-67 clips/s with two decode threads and 68-77 with two processes
(32 clients, demo-lipreading). They are driven from the event loop (`worker_pool`), not
through an executor's threads. An upload is read into memory only when a worker is
about to take it, so at most `2 * workers` uploads are held as bytes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any, BinaryIO, TypeVar

from mplstm.core.clip import Clip
from mplstm.core.cpus import usable_cpus
from mplstm.core.limits import DecodeLimits
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.worker_processes import CRASH_ATTEMPTS, decoder_crashed
from mplstm.service.worker_pool import WorkerPool

T = TypeVar("T")

# A worker that dies takes every clip it was given with it: each clip gets more tries
# on fresh workers (CRASH_ATTEMPTS in all), so one clip's crash does not refuse the others.


class DecodePool:
    """A fixed pool of decode processes shared by every model of the service."""

    def __init__(self, pool: WorkerPool, limits: DecodeLimits) -> None:
        self.limits = limits
        self._pool = pool
        self._slots = asyncio.Semaphore(2 * pool.workers)

    @property
    def workers(self) -> int:
        """Worker processes in the pool."""
        return self._pool.workers

    @classmethod
    async def open(cls, workers: int, limits: DecodeLimits) -> DecodePool:
        """Spawn `workers` processes (0: one per usable CPU)."""
        return cls(await WorkerPool(workers or usable_cpus()).start(), limits)

    async def decode(self, views: Mapping[str, BinaryIO], config: PreprocessConfig) -> Clip:
        """`load_clip` in a worker process, under the service's decode limits."""
        return await self.run(load_clip, views, config)

    async def run(
        self,
        fn: Callable[..., T],
        views: Mapping[str, BinaryIO],
        config: PreprocessConfig,
        *args: Any,
    ) -> T:
        """`fn(view bytes, config, *args)` in a worker process, `config` under the decode limits."""
        config = _under(config, self.limits)
        async with self._slots:
            # Spooled to disk (over a MiB) is read off the event loop; in memory, no thread hop.
            if all(_in_memory(source) for source in views.values()):
                data = _read_all(views)
            else:
                data = await asyncio.to_thread(_read_all, views)
            for _ in range(CRASH_ATTEMPTS):
                with contextlib.suppress(BrokenProcessPool):  # the pool replaced the worker
                    return await self._pool.submit(fn, data, config, *args)
        raise decoder_crashed("send them again")

    async def run_on_each(self, fn: Callable[..., T], *args: Any) -> list[T]:
        """`fn(*args)` once in every worker."""
        return await self._pool.run_on_each(fn, *args)

    async def close(self) -> None:
        """Stop the workers once their tasks are done."""
        await self._pool.close()


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
