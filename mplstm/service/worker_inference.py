"""The video path on a CPU backend: the decode worker that decoded a clip infers it too.

Through the dynamic batcher, every decoded clip is pickled back to the main process
and waits for the model's one inference thread, whose ONNX Runtime threads then
contend for the cores with the decoders. On a GPU that buys big batches; on the CPU
batching buys nothing (demo-lipreading: 8.9 ms of CPU per clip at batch 1, 9.1 at
batch 32) and the hand-over costs. Measured on the 2-core dev host (bench/serve.py, 32
clients, 5-view 64x64 clips): 22.7 ms of server CPU per request here against 23.8
through the batcher (82.9 against 81.5 clips/s); 1-3 ms less over three earlier runs,
before the workers were driven from the event loop (`worker_pool`). So, as in the
batch scorer (`mplstm.scoring.worker_inference`), each worker runs the clip it decoded
through its own single-threaded session and sends back only the probabilities.

`MPLSTM_VIDEO_INFERENCE` picks: `auto` (here where the model's backend is ONNX Runtime
on the CPU, else the batcher), `batcher`, or `workers`. The tensor route (/v2) always
uses the batcher: its requests are tensors already, and clients batch them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import BinaryIO

from mplstm.core.package import ModelPackage
from mplstm.core.preprocess import PreprocessConfig
from mplstm.service.backends.base import BackendUnavailableError
from mplstm.service.backends.cpu_worker import (
    WorkerInferenceError,
    WorkerPrediction,
    decode_and_infer,
    warm_up,
)
from mplstm.service.decode_pool import DecodePool
from mplstm.service.errors import (
    InferenceFailedError,
    model_queue_full,
    model_shutting_down,
    no_answer_in_time,
)
from mplstm.service.metrics import ServiceMetrics
from mplstm.service.settings import VideoInference

log = logging.getLogger(__name__)


def infers_in_workers(choice: VideoInference, backend: str, on_gpu: bool) -> bool:
    """Whether a model on `backend` serves its video route from the decode workers.

    Raises BackendUnavailableError for `workers` on a GPU backend: the workers run ONNX
    Runtime on the CPU, which would answer the video route from another runtime than /v2.
    """
    on_cpu = backend == "onnxruntime" and not on_gpu
    if choice is VideoInference.WORKERS and not on_cpu:
        raise BackendUnavailableError(
            f"MPLSTM_VIDEO_INFERENCE=workers needs ONNX Runtime on the CPU, but this model "
            f"runs on {backend}{' on a GPU' if on_gpu else ''}; use auto or batcher"
        )
    return choice is VideoInference.WORKERS or (choice is VideoInference.AUTO and on_cpu)


class WorkerInference:
    """One model's video route through the decode workers: admission, deadline, metrics."""

    def __init__(
        self,
        model: str,
        package: ModelPackage,
        pool: DecodePool,
        *,
        threads: int,
        sessions_kept: Callable[[], int],
        max_queue: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.model = model
        self._package = package
        self._pool = pool
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
            await self._pool.run_on_each(
                warm_up, self._package, self._threads, self._sessions_kept()
            )
        except Exception as exc:
            raise BackendUnavailableError(f"warm-up in the decode workers failed: {exc}") from exc

    async def predict(
        self, views: Mapping[str, BinaryIO], config: PreprocessConfig, *, timeout_s: float
    ) -> WorkerPrediction:
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
                prediction = await self._pool.run(
                    decode_and_infer,
                    views,
                    config,
                    self._package,
                    self._threads,
                    self._sessions_kept(),
                )
        except TimeoutError:
            raise no_answer_in_time(self.model, timeout_s) from None
        except WorkerInferenceError as exc:
            log.error("%s: inference failed in a decode worker: %s", self.model, exc)
            raise InferenceFailedError(f"inference failed: {exc}") from None
        finally:
            self._pending -= 1
            depth.dec()
            if not self._pending:
                self._idle.set()
        self._metrics.batch_size.labels(self.model).observe(1)
        return prediction

    async def stop(self) -> None:
        """Refuse new requests and wait for the ones in flight."""
        self._closing = True
        await self._idle.wait()
