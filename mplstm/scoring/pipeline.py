"""Decoding in worker processes overlaps inference: the batch scorer's two placements.

`score_batches` (`Placement.MAIN`, what a GPU wants): the workers decode a window of
clips ahead of the model, and this process stacks decoded clips into batches and runs
the backend on them meanwhile. `score_in_workers` (`Placement.WORKERS`, the default on
a CPU): each worker decodes a batch of clips and infers it with its own session, so no
frame leaves the process that decoded it. Both run the same worker tasks as the
service (`mplstm.inference.tasks`) on the same pool (`mplstm.core.worker_pool`), with
its crash policy; a clip that kills its worker each time becomes an error row.

At most `window` clips (or batches) are in flight, so memory stays bounded however
long the manifest. Results come in completion order: the output is keyed by clip id.
A clip that fails to decode becomes an error result, never an exception: one bad file
must not stop a run over a million clips.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from mplstm.core.camera_checks import ViewFailure
from mplstm.core.cpus import threads_per_worker
from mplstm.core.manifest import ClipRecord
from mplstm.core.package import ModelPackage
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.worker_pool import PoolThread, WorkerCrashedError
from mplstm.inference.backend import Backend
from mplstm.inference.tasks import (
    Decoded,
    Scored,
    decode,
    decode_and_infer,
    decoder_crashed,
    infer_decoded,
)
from mplstm.scoring.hooks import NO_HOOKS, ScoringHooks

# Code of the error row for a failure outside the ClipError family (a decoder bug).
UNEXPECTED_ERROR = "decode_failed"

X = TypeVar("X")
R = TypeVar("R")


@dataclass(frozen=True)
class ClipScore:
    """One clip's outcome: class probabilities and views used, or an error."""

    record: ClipRecord
    probabilities: np.ndarray | None  # float32 [classes]
    views_used: tuple[str, ...]
    error_code: str | None = None
    error: str | None = None
    # Failed a camera check: masked (scored clips), or why the clip was refused.
    views_dropped: tuple[ViewFailure, ...] = ()


@dataclass
class StageTimes:
    """Where the time went: decode (summed over workers), inference, and waiting for decodes."""

    decode_s: float = 0.0
    inference_s: float = 0.0
    decode_wait_s: float = 0.0  # the main process idle, every decoded clip used up
    clips: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def add(self, scored: Sequence[Scored]) -> None:
        """Count one inference batch's clips (decoded or not) and its time."""
        self.clips += len(scored)
        self.decode_s += sum(s.decode_s for s in scored)
        good = [s for s in scored if s.error is None]
        if good:
            self.inference_s += good[0].inference_s
            self.batches += 1
            self.batch_sizes.append(len(good))


def clip_score(record: ClipRecord, scored: Scored) -> ClipScore:
    """The scorer's result for a record from a worker task's outcome."""
    if scored.error is None:
        return ClipScore(
            record, scored.probabilities, scored.views_used, views_dropped=scored.views_dropped
        )
    code = getattr(scored.error, "code", None)
    if code is None:  # not a ClipError: a decoder bug fails this clip, not the run
        message = f"unexpected {type(scored.error).__name__} while decoding: {scored.error}"
        return ClipScore(record, None, (), UNEXPECTED_ERROR, message)
    failures = getattr(scored.error, "failures", ())  # camera_failed: which views, why
    return ClipScore(record, None, (), code, str(scored.error), failures)


def crashed_score(record: ClipRecord, config: PreprocessConfig) -> Scored:
    """The outcome of a clip that killed its worker each time it ran."""
    error = decoder_crashed("score it again")
    return Scored(config.view_names or (), None, None, 0.0, 0.0, 0, error)


def completion_order(
    items: Iterable[X],
    submit: Callable[[X], Future[R]],
    window: int,
    times: StageTimes,
    on_submit: Callable[[X], None] = lambda item: None,
) -> Iterator[R]:
    """`submit` each item, at most `window` unconsumed at once; results as they complete.

    Time spent waiting for the next result goes to `times.decode_wait_s`. Leaving early
    cancels what has not started.
    """
    todo = iter(items)
    pending: set[Future[R]] = set()
    try:
        while True:
            while len(pending) < window and (item := next(todo, None)) is not None:
                pending.add(submit(item))
                on_submit(item)
            if not pending:
                return
            start = time.perf_counter()
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            times.decode_wait_s += time.perf_counter() - start
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()


def score_batches(
    records: Sequence[ClipRecord],
    backend: Backend,
    config: PreprocessConfig,
    *,
    batch_size: int = 8,
    decode_workers: int | PoolThread = 2,
    window: int | None = None,
    times: StageTimes | None = None,
    hooks: ScoringHooks = NO_HOOKS,
) -> Iterator[list[ClipScore]]:
    """Score records, yielding one group of results per inference batch (plus error results).

    `decode_workers`: a running `PoolThread`, or a number of processes to start for this
    call (0: decode in this process). `times` (filled in as it goes) says how long
    decoding and inference took.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    times = times if times is not None else StageTimes()
    with contextlib.ExitStack() as stack:
        pool = decode_workers
        if isinstance(pool, int):
            pool = stack.enter_context(PoolThread(pool).start()) if pool else None
        # Enough clips ahead that the workers never wait while a batch is being inferred.
        window = window or 2 * batch_size + 2 * (pool.workers if pool else 0)
        ready: list[tuple[ClipRecord, Decoded]] = []
        failed: list[tuple[ClipRecord, Decoded]] = []
        for record, decoded in _decoded(records, config, pool, window, times, hooks):
            (ready if decoded.error is None else failed).append((record, decoded))
            if len(ready) >= batch_size or len(failed) >= batch_size:
                yield _infer(failed + ready, backend, times)
                ready, failed = [], []
        if ready or failed:
            yield _infer(failed + ready, backend, times)


def _decoded(
    records: Sequence[ClipRecord],
    config: PreprocessConfig,
    pool: PoolThread | None,
    window: int,
    times: StageTimes,
    hooks: ScoringHooks,
) -> Iterator[tuple[ClipRecord, Decoded]]:
    """(record, decoded clip) in completion order, from `pool` (None: decoded here)."""
    if pool is None:
        for record in records:
            hooks.clip_submitted()
            yield record, decode(dict(record.views), config, hooks.before_decode)
        return

    async def one(record: ClipRecord) -> tuple[ClipRecord, Decoded]:
        try:
            return record, await pool.pool.submit(
                decode, dict(record.views), config, hooks.before_decode
            )
        except WorkerCrashedError:
            crashed = crashed_score(record, config)
            return record, Decoded(crashed.view_names, None, None, 0.0, crashed.error)

    yield from completion_order(
        records, lambda r: pool.run(one(r)), window, times, lambda _: hooks.clip_submitted()
    )


def _infer(
    ready: list[tuple[ClipRecord, Decoded]], backend: Backend, times: StageTimes
) -> list[ClipScore]:
    scored = infer_decoded([d for _, d in ready], backend)
    times.add(scored)
    return [clip_score(record, s) for (record, _), s in zip(ready, scored, strict=True)]


def score_in_workers(
    records: Sequence[ClipRecord],
    package: ModelPackage,
    config: PreprocessConfig,
    pool: PoolThread,
    *,
    batch_size: int = 8,
    threads: int = 0,
    window: int | None = None,
    times: StageTimes | None = None,
    hooks: ScoringHooks = NO_HOOKS,
) -> Iterator[list[ClipScore]]:
    """Score records in batches of `batch_size`, each decoded and inferred by one worker.

    Yields each batch's results as a worker finishes it. `threads`: ONNX Runtime threads
    per worker (0: `threads_per_worker`); at most `window` batches (default two per
    worker) are out at once. Each worker keeps one session: the run's model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    times = times if times is not None else StageTimes()
    per_worker = threads_per_worker(pool.workers, threads)
    batches = [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]
    task: tuple[Any, ...] = (config, package, per_worker, 1, hooks.before_decode)

    async def run(batch: list[ClipRecord]) -> list[list[tuple[ClipRecord, Scored]]]:
        """The batch's outcomes, as the batches it ran in (a crash splits it)."""
        try:
            scored = await pool.pool.submit(decode_and_infer, [dict(r.views) for r in batch], *task)
        except WorkerCrashedError:
            if len(batch) == 1:  # killed its worker alone: this clip is the culprit
                return [[(batch[0], crashed_score(batch[0], config))]]
            # A batch is not a clip: each of its clips runs on its own to find the culprit.
            return [ran for record in batch for ran in await run([record])]
        return [list(zip(batch, scored, strict=True))]

    def submitted(batch: list[ClipRecord]) -> None:
        for _ in batch:
            hooks.clip_submitted()

    # The main process only waits here, so its waiting is not a stage: not counted.
    waited = StageTimes()
    window = window or 2 * pool.workers
    for ran in completion_order(batches, lambda b: pool.run(run(b)), window, waited, submitted):
        for pairs in ran:
            times.add([s for _, s in pairs])
        yield [clip_score(record, s) for pairs in ran for record, s in pairs]


def score_clips(
    records: Sequence[ClipRecord], backend: Backend, config: PreprocessConfig, **options: Any
) -> dict[str, ClipScore]:
    """Clip id → its `ClipScore` (probabilities or error): the whole pipeline, in memory."""
    return {
        result.record.id: result
        for group in score_batches(records, backend, config, **options)
        for result in group
    }
