"""Decoding off the event loop: uploaded views -> a `Clip`, in a pool of worker threads.

Threads, not processes: PyAV releases the GIL while FFmpeg decodes and scales (measured
by the lead earlier), and a thread reads the spooled upload directly, where a process
would need every upload pickled across. Measured (`load_clip`, 3 views of 40 frames 96x96 H.264 -> 20 x 88 x 88 gray, 60 clips, two
rounds) on the 2-core dev host while it ran at load 5.4-6.1: serial 30.5 / 29.0 clips/s,
2 threads 24.2 / 26.9, 2 processes 26.3 / 24.4. With no idle core neither pool could
scale, and threads were no worse than processes within that noise; re-measure on an
idle host (bench/) before tuning `MPLSTM_DECODE_WORKERS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from mplstm.core.clip import Clip
from mplstm.core.limits import DecodeLimits
from mplstm.core.preprocess import PreprocessConfig, ViewSource, load_clip


class DecodePool:
    """A fixed pool of decode threads shared by every model of the service."""

    def __init__(self, workers: int, limits: DecodeLimits) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.limits = limits
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    async def decode(self, views: Mapping[str, ViewSource], config: PreprocessConfig) -> Clip:
        """`load_clip` in a worker thread, under the service's decode limits."""
        config = dataclasses.replace(config, limits=self.limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, load_clip, views, config)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
