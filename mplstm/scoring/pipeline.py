"""A bounded decode → batch → infer pipeline: decoding in worker processes overlaps inference.

Worker processes run `core.load_clip` (the service's decoding, with its limits) on a
window of clips ahead of the model; the main process stacks decoded clips into batches
and runs the backend on them while the workers go on decoding. At most `window` clips
are in flight, so memory stays bounded however long the manifest. Results come back in
completion order: the output is order-independent and keyed by clip id.

A clip that fails to decode becomes an error result, never an exception: one bad file
must not stop a run over a million clips.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from mplstm.core.errors import ClipError
from mplstm.core.manifest import ClipRecord
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.worker_processes import CRASH_ATTEMPTS, WorkerProcesses, decoder_crashed
from mplstm.scoring.holds import crash_if_told
from mplstm.service.backends.base import Backend

log = logging.getLogger(__name__)

# Code of the error row for a failure outside the ClipError family (a decoder bug).
UNEXPECTED_ERROR = "decode_failed"

X = TypeVar("X")
R = TypeVar("R")


@dataclass(frozen=True)
class Decoded:
    """A decoded clip (frames and mask), or the error that stopped its decoding."""

    record: ClipRecord
    frames: np.ndarray | None  # uint8 [V, T, C, H, W]
    view_mask: np.ndarray | None  # bool [V]
    seconds: float  # time spent decoding, in whichever process did it
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ClipScore:
    """One clip's outcome: class probabilities and views used, or an error."""

    record: ClipRecord
    probabilities: np.ndarray | None  # float32 [classes]
    views_used: tuple[str, ...]
    error_code: str | None = None
    error: str | None = None


@dataclass
class StageTimes:
    """Where the time went: decode (summed over workers), inference, and waiting for decodes."""

    decode_s: float = 0.0
    inference_s: float = 0.0
    decode_wait_s: float = 0.0  # the main process idle, every decoded clip used up
    clips: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def decode_record(record: ClipRecord, config: PreprocessConfig) -> Decoded:
    """`load_clip` on a manifest record; a failure comes back as an error, not an exception."""
    crash_if_told(record.id)
    start = time.perf_counter()
    try:
        clip = load_clip(dict(record.views), config)
    except ClipError as exc:
        return Decoded(record, None, None, time.perf_counter() - start, exc.code, str(exc))
    except Exception as exc:  # a decoder bug fails this clip, not the run
        message = f"unexpected {type(exc).__name__} while decoding: {exc}"
        return Decoded(record, None, None, time.perf_counter() - start, UNEXPECTED_ERROR, message)
    return Decoded(record, clip.frames, clip.view_mask, time.perf_counter() - start)


def error_score(decoded: Decoded) -> ClipScore:
    """The result of a clip that could not be decoded: its error, nothing inferred."""
    return ClipScore(decoded.record, None, (), decoded.error_code, decoded.error)


def crashed_decode(record: ClipRecord) -> Decoded:
    """The error result of a clip that killed a decode worker each time it was tried."""
    error = decoder_crashed("score it again")
    return Decoded(record, None, None, 0.0, error.code, str(error))


class DecodeWorkers(WorkerProcesses):
    """Decode worker processes, started once and reused by every batch (and run) given them."""

    def decode(self, record: ClipRecord, config: PreprocessConfig) -> Future[Decoded]:
        """`decode_record` in a worker."""
        return self.submit(decode_record, record, config)


def decode_all(
    records: Iterable[ClipRecord],
    config: PreprocessConfig,
    workers: DecodeWorkers | None,
    window: int,
    times: StageTimes,
    on_submit: Callable[[], None] = lambda: None,
) -> Iterator[Decoded]:
    """Decoded clips in completion order, from `workers` (None: decoded in this process).

    At most `window` clips are submitted and not yet consumed. `on_submit` runs after
    each submission (a test hook).
    """
    if workers is None:
        for record in records:
            on_submit()
            decoded = decode_record(record, config)
            times.decode_s += decoded.seconds
            yield decoded
        return
    recovery = CrashRecovery(workers.restart, crashed_decode)
    for decoded in completion_order(
        records, lambda record: workers.decode(record, config), window, times, on_submit, recovery
    ):
        times.decode_s += decoded.seconds
        yield decoded


@dataclass(frozen=True)
class CrashRecovery(Generic[X, R]):
    """What `completion_order` does when a worker process dies (a decoder crash).

    Every item in flight then fails with the pool. The pool is replaced, and those
    items run again one at a time, so that the one that kills a worker on its own is
    found: split into smaller items if it can be, else given up as `crashed(item)`
    (a clip has then had CRASH_ATTEMPTS tries: in flight, then alone).
    """

    restart: Callable[[], None]  # replace the broken pool with fresh workers
    crashed: Callable[[X], R]  # the result of an item that killed a worker alone
    split: Callable[[X], list[X]] = lambda item: [item]  # a batch into its clips


def completion_order(
    items: Iterable[X],
    submit: Callable[[X], Future[R]],
    window: int,
    times: StageTimes,
    on_submit: Callable[[], None] = lambda: None,
    recovery: CrashRecovery[X, R] | None = None,
) -> Iterator[R]:
    """`submit` each item, at most `window` unconsumed at once; results as they complete.

    Time spent waiting for the next result goes to `times.decode_wait_s`. Leaving early
    cancels what has not started. Without `recovery`, a dead worker raises
    BrokenProcessPool.
    """
    todo = iter(items)
    pending: dict[Future[R], X] = {}
    suspects: deque[X] = deque()  # in flight when a worker died: rerun one at a time
    try:
        while True:
            while not suspects and len(pending) < window:
                if (item := next(todo, None)) is None:
                    break
                try:
                    pending[submit(item)] = item
                except BrokenProcessPool:  # a worker died since the last result
                    if recovery is None:
                        raise
                    suspects.append(item)
                on_submit()
            if not pending:
                if not suspects:
                    return
                assert recovery is not None
                recovery.restart()
                yield from _isolate(suspects, submit, recovery)
                continue
            start = time.perf_counter()
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            times.decode_wait_s += time.perf_counter() - start
            for future in done:
                item = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    if recovery is None:
                        raise
                    suspects.append(item)  # the rest of the pool's futures fail too
                    continue
                yield result
    finally:
        for future in pending:
            future.cancel()


def _isolate(
    suspects: deque[X], submit: Callable[[X], Future[R]], recovery: CrashRecovery[X, R]
) -> Iterator[R]:
    """Run suspects alone, each on a healthy pool (restarted before), until none is left."""
    while suspects:
        item = suspects.popleft()
        try:
            result = submit(item).result()
        except BrokenProcessPool:
            recovery.restart()
            parts = recovery.split(item)
            if len(parts) > 1:
                suspects.extendleft(reversed(parts))
            else:
                log.warning(
                    "a clip killed a decode worker %d times; scored as an error", CRASH_ATTEMPTS
                )
                yield recovery.crashed(item)
            continue
        yield result


def score_batches(
    records: Sequence[ClipRecord],
    backend: Backend,
    config: PreprocessConfig,
    *,
    batch_size: int = 8,
    decode_workers: int | DecodeWorkers = 2,
    window: int | None = None,
    times: StageTimes | None = None,
    on_submit: Callable[[], None] = lambda: None,
) -> Iterator[list[ClipScore]]:
    """Score records, yielding one group of results per inference batch (plus error results).

    `decode_workers`: a running `DecodeWorkers`, or a number of processes to start for
    this call (0: decode in this process). `times` (filled in as it goes) says how long
    decoding and inference took.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    times = times if times is not None else StageTimes()
    with contextlib.ExitStack() as stack:
        workers = decode_workers
        if isinstance(workers, int):
            workers = stack.enter_context(DecodeWorkers(workers)) if workers else None
        yield from _score(records, backend, config, batch_size, workers, window, times, on_submit)


def _score(
    records: Sequence[ClipRecord],
    backend: Backend,
    config: PreprocessConfig,
    batch_size: int,
    workers: DecodeWorkers | None,
    window: int | None,
    times: StageTimes,
    on_submit: Callable[[], None],
) -> Iterator[list[ClipScore]]:
    # Enough clips ahead that the workers never wait while a batch is being inferred.
    window = window or 2 * batch_size + 2 * (workers.workers if workers else 0)
    names = config.view_names or ()
    ready: list[Decoded] = []
    failed: list[ClipScore] = []
    for decoded in decode_all(records, config, workers, window, times, on_submit):
        times.clips += 1
        if decoded.frames is None:
            failed.append(error_score(decoded))
        else:
            ready.append(decoded)
        if len(ready) >= batch_size or len(failed) >= batch_size:
            yield failed + _infer(ready, backend, names, times)
            ready, failed = [], []
    if ready or failed:
        yield failed + _infer(ready, backend, names, times)


def score_clips(
    records: Sequence[ClipRecord],
    backend: Backend,
    config: PreprocessConfig,
    **options: Any,
) -> dict[str, ClipScore]:
    """Clip id → its `ClipScore` (probabilities or error): the whole pipeline, in memory."""
    return {
        result.record.id: result
        for group in score_batches(records, backend, config, **options)
        for result in group
    }


def _infer(
    ready: list[Decoded], backend: Backend, names: Sequence[str], times: StageTimes
) -> list[ClipScore]:
    if not ready:
        return []
    frames = np.stack([d.frames for d in ready])
    masks = np.stack([d.view_mask for d in ready])
    start = time.perf_counter()
    output = backend.infer(frames, masks)
    times.inference_s += time.perf_counter() - start
    times.batches += 1
    times.batch_sizes.append(len(ready))
    return [
        ClipScore(
            d.record,
            output.probabilities[i],
            tuple(name for name, used in zip(names, d.view_mask, strict=True) if used),
        )
        for i, d in enumerate(ready)
    ]
