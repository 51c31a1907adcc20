"""Spawned worker processes for decoding: the batch scorer's pool, and what the service shares.

The service drives its own workers from its event loop (`mplstm.service.worker_pool`);
it shares the parent watch, the crash attempts and the crash error defined here.

Processes, not threads: two decode threads in one process cost 38% more CPU per clip
than one (10.7 → 14.8 ms for a 5-view 64x64 clip on the 2-core dev host, GIL hand-offs
between PyAV's many short GIL-free sections), while two processes cost 3% more.

Spawned, not forked: the parent holds ONNX Runtime's thread pool, which must not be
forked. A spawned worker takes about a second to import PyAV and numpy, so `start`
launches them without waiting. A worker that dies (a decoder crash on a hostile file)
breaks the pool; `restart` replaces it, so one bad clip cannot stop the others.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Self, TypeVar

from mplstm.core.errors import CorruptVideoError

T = TypeVar("T")


class WorkerProcesses:
    """A fixed number of spawned worker processes, reused by every task given them."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._lock = threading.Lock()
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )

    def start(self) -> Self:
        """Launch every worker now (one trivial task each, not waited for)."""
        for _ in range(self.workers):
            self._executor.submit(_ready)
        return self

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run `fn(*args)` in a worker; `fn`, its arguments and its result must pickle."""
        return self._executor.submit(fn, *args)

    def restart(self) -> None:
        """Replace a broken pool with fresh workers (once, however many callers saw it break)."""
        with self._lock:
            try:
                self._executor.submit(_ready)
                return  # still healthy: another caller replaced it already
            except BrokenProcessPool:
                old, self._executor = self._executor, self._new_executor()
        old.shutdown(wait=False, cancel_futures=True)
        self.start()

    def close(self) -> None:
        """Finish the running tasks, cancel the queued ones, and stop the workers."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Tries a clip gets before a worker crash is blamed on it (the service retries it on
# fresh workers; the scorer reruns it alone): one crash may be another clip's doing.
CRASH_ATTEMPTS = 2


def decoder_crashed(retry: str) -> CorruptVideoError:
    """The error of a clip that killed a decode worker CRASH_ATTEMPTS times; `retry` says how to resend."""
    return CorruptVideoError(
        f"the video decoder crashed on this clip {CRASH_ATTEMPTS} times; re-encode the views "
        f"(e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4) and {retry}"
    )


def exit_with_parent(parent: int) -> None:
    """In a worker: exit once the parent is gone (SIGKILLed, it cannot stop its workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _ready() -> int:
    # Unpickling this function in a worker imports this module; the task imports the rest.
    import mplstm.core.preprocess  # noqa: F401 -- PyAV and numpy, before the first clip

    return os.getpid()
