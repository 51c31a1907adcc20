"""Scoring on a CPU backend: every worker process decodes a batch of clips and infers it itself.

The central pipeline (`mplstm.scoring.pipeline`: decode workers feed one inference
process) is right for a GPU, which wants every clip in one big batch. On the CPU it
loses a fifth of the machine: each decoded clip is pickled across a pipe, and ONNX
Runtime's intra-op threads and the decoders, more runnable threads than cores, evict
each other's caches. Measured on the 2-core dev host with 5-view 64x64 clips: decode
took 14 ms of CPU per clip in the pipeline's workers against 11.2 alone, inference 11.5
against 9.2 (bench/score.py). Here each worker runs `load_clip` then its own ONNX
Runtime session (a few threads each, so that the workers together fill the cores) on
one batch at a time: decoding in one worker still overlaps inference in another, no
frame leaves the process that decoded it, and only probabilities come back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from mplstm.core.cpus import threads_per_worker
from mplstm.core.manifest import ClipRecord
from mplstm.core.package import ModelPackage
from mplstm.core.preprocess import PreprocessConfig
from mplstm.scoring.pipeline import (
    ClipScore,
    CrashRecovery,
    DecodeWorkers,
    StageTimes,
    completion_order,
    crashed_decode,
    error_score,
    score_batches,
)
from mplstm.service.backends.cpu_worker import cpu_session


@dataclass(frozen=True)
class BatchResult:
    """What a worker sends back for one batch: scores (or errors) and the time it took."""

    scores: list[ClipScore]
    times: StageTimes


def score_in_workers(
    records: Sequence[ClipRecord],
    package: ModelPackage,
    config: PreprocessConfig,
    workers: DecodeWorkers,
    *,
    batch_size: int = 8,
    threads: int = 0,
    window: int | None = None,
    times: StageTimes | None = None,
    on_submit: Callable[[], None] = lambda: None,
) -> Iterator[list[ClipScore]]:
    """Score records in batches of `batch_size`, each decoded and inferred by one worker.

    Yields each batch's results as a worker finishes it. `threads`: ONNX Runtime threads
    per worker (0: `threads_per_worker`). `on_submit` runs once per clip handed out (a
    test hook); at most `window` batches (default two per worker) are out at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    times = times if times is not None else StageTimes()
    per_worker = threads_per_worker(workers.workers, threads)
    batches = [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]

    def submit(batch: list[ClipRecord]) -> Future[BatchResult]:
        future = workers.submit(decode_and_infer, batch, package, config, per_worker)
        for _ in batch:
            on_submit()
        return future

    # The main process only waits here, so its waiting is not a stage: not counted.
    waited = StageTimes()
    recovery = CrashRecovery(workers.restart, _crashed, lambda batch: [[r] for r in batch])
    window = window or 2 * workers.workers
    for result in completion_order(batches, submit, window, waited, recovery=recovery):
        times.decode_s += result.times.decode_s
        times.inference_s += result.times.inference_s
        times.clips += result.times.clips
        times.batches += result.times.batches
        times.batch_sizes += result.times.batch_sizes
        yield result.scores


def decode_and_infer(
    records: list[ClipRecord], package: ModelPackage, config: PreprocessConfig, threads: int
) -> BatchResult:
    """In a worker: decode the records here and score them as one batch (bad clips as errors)."""
    times = StageTimes()
    # One model per run: a worker reused with another package drops the old session.
    backend = cpu_session(package, threads, keep=1)
    scores = [
        score
        for group in score_batches(
            records, backend, config, batch_size=len(records), decode_workers=0, times=times
        )
        for score in group
    ]
    return BatchResult(scores, times)


def _crashed(batch: list[ClipRecord]) -> BatchResult:
    """The error row of a clip (a batch of one) that killed its worker each time it ran."""
    (record,) = batch
    return BatchResult([error_score(crashed_decode(record))], StageTimes(clips=1))
