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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from mplstm.core.errors import ClipError
from mplstm.core.manifest import ClipRecord
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.worker_processes import WorkerProcesses
from mplstm.service.backends.base import Backend

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
    start = time.perf_counter()
    try:
        clip = load_clip(dict(record.views), config)
    except ClipError as exc:
        return Decoded(record, None, None, time.perf_counter() - start, exc.code, str(exc))
    except Exception as exc:  # a decoder bug fails this clip, not the run
        message = f"unexpected {type(exc).__name__} while decoding: {exc}"
        return Decoded(record, None, None, time.perf_counter() - start, UNEXPECTED_ERROR, message)
    return Decoded(record, clip.frames, clip.view_mask, time.perf_counter() - start)


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
    for decoded in completion_order(
        records, lambda record: workers.decode(record, config), window, times, on_submit
    ):
        times.decode_s += decoded.seconds
        yield decoded


def completion_order(
    items: Iterable[X],
    submit: Callable[[X], Future[R]],
    window: int,
    times: StageTimes,
    on_submit: Callable[[], None] = lambda: None,
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
                on_submit()
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
            failed.append(ClipScore(decoded.record, None, (), decoded.error_code, decoded.error))
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
