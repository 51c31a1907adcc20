"""The one pool of worker processes: decoding (and, on a CPU, inference) off the main process.

The service drives it from its event loop; the batch scorer, which is synchronous
code, through `PoolThread`, which runs the same pool on an event loop of its own.

Processes, not threads: two decode threads in one process cost far more CPU per clip
than two processes (PyAV's many short GIL-free sections hand the GIL back and forth).
Spawned, not forked: the parent holds ONNX Runtime's thread pool, which must not be
forked. Driven from the event loop over one socket per worker, not through
`ProcessPoolExecutor`, whose manager and queue-feeder threads cost a GIL hand-over and a
wake-up write per task in each direction (docs/benchmarks.md, service section).

A task goes to the worker with the fewest tasks in flight; a worker answers in order.
The crash policy (a decoder crash on a hostile file kills the process): a worker that
dies fails only the tasks it held; each of them runs once more, alone on a worker that
holds nothing else, so that a task is blamed only for a crash it caused by itself;
one that kills its worker alone raises `WorkerCrashedError`. The dead worker is
replaced at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Self, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tries a task gets before a crash is blamed on it: among other tasks, then alone.
CRASH_ATTEMPTS = 2
# multiprocessing.Connection's framing (a signed 32-bit big-endian length), which the
# worker's end of the socket speaks through `recv_bytes` and `send_bytes`.
_HEADER = struct.Struct("!i")
_STOP_TIMEOUT_S = 5.0
# Holds a decoded clip whole rather than pausing the socket several times per answer.
_READ_BUFFER = 4 * 2**20


class WorkerCrashedError(BrokenProcessPool):
    """A task killed its worker process every time it ran, the last time alone."""


class _WorkerDied(BrokenProcessPool):
    """The worker holding a task exited before answering it (maybe another task's doing)."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # Futures of the tasks sent and not yet answered, oldest first.
    pending: collections.deque[asyncio.Future[Any]] = field(default_factory=collections.deque)
    # Reserved for a task that must run alone: nothing else is sent to it meanwhile.
    reserved: bool = False
    alive: bool = True


class WorkerPool:
    """A fixed number of spawned worker processes; `submit` from the event loop."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._live: list[_Worker] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Condition | None = None
        self._closed = False

    async def start(self) -> Self:
        """Spawn every worker; they import their modules in the background (a second or so)."""
        self._changed = asyncio.Condition()
        for _ in range(self.workers):
            await self._add(await self._start_worker())
        return self

    async def submit(self, fn: Callable[..., T], /, *args: Any) -> T:
        """`fn(*args)` in a worker; `fn`, its arguments and its result must pickle.

        A task whose worker dies runs once more, alone; WorkerCrashedError if it kills
        that worker too.
        """
        with contextlib.suppress(_WorkerDied):
            return await self._send(await self._pick(), fn, args)
        worker = await self._reserve()
        try:
            return await self._send(worker, fn, args)
        except _WorkerDied:
            raise WorkerCrashedError(
                f"{getattr(fn, '__name__', fn)!r} killed its worker process {CRASH_ATTEMPTS} "
                "times, the last time alone"
            ) from None
        finally:
            await self._release(worker)

    async def run_on_each(self, fn: Callable[..., T], /, *args: Any) -> list[T]:
        """`fn(*args)` once in every worker (no retry: it prepares the workers)."""
        self._check_open()
        return await asyncio.gather(*(self._send(w, fn, args) for w in list(self._live)))

    async def close(self) -> None:
        """Stop every worker (each finishes the task it runs), then wait for them to exit."""
        self._closed = True
        workers, self._live = self._live, []
        for worker in workers:
            worker.writer.close()  # the worker reads EOF once its queued tasks are done
        for worker in workers:
            await asyncio.to_thread(worker.process.join, _STOP_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.kill()
        for task in list(self._readers):
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def _check_open(self) -> None:
        if self._closed or self._changed is None:
            raise RuntimeError("the worker pool is not running (start it, or it was closed)")

    async def _pick(self) -> _Worker:
        """The least busy worker not reserved for a retry (waits while every one is)."""
        self._check_open()
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(lambda: any(not w.reserved for w in self._live))
            return min((w for w in self._live if not w.reserved), key=lambda w: len(w.pending))

    async def _reserve(self) -> _Worker:
        """A worker that holds no task and takes no other until released (a retry runs alone)."""
        self._check_open()
        assert self._changed is not None
        async with self._changed:
            while True:
                await self._changed.wait_for(lambda: any(not w.reserved for w in self._live))
                worker = min(
                    (w for w in self._live if not w.reserved), key=lambda w: len(w.pending)
                )
                worker.reserved = True
                try:
                    # What it held before finishes first (or it dies: pick another).
                    await self._changed.wait_for(lambda w=worker: not w.pending or not w.alive)
                except BaseException:  # the caller gave up (deadline): free the worker
                    worker.reserved = False
                    self._changed.notify_all()
                    raise
                if worker.alive:
                    return worker
                worker.reserved = False

    async def _release(self, worker: _Worker) -> None:
        assert self._changed is not None
        async with self._changed:
            worker.reserved = False
            self._changed.notify_all()

    async def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve, args=(child, os.getpid()), name="mplstm-worker", daemon=True
        )
        process.start()
        child.close()
        sock = socket.socket(fileno=os.dup(parent.fileno()))  # a socketpair end: AF_UNIX
        parent.close()
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_BUFFER)
        return _Worker(process, reader, writer)

    async def _add(self, worker: _Worker) -> None:
        assert self._changed is not None
        async with self._changed:
            self._live.append(worker)
            self._changed.notify_all()
        task = asyncio.get_running_loop().create_task(self._read(worker), name="worker-reader")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _send(self, worker: _Worker, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if not worker.alive:  # died between the pick and now
            raise _WorkerDied("a worker process exited")
        worker.pending.append(future)
        worker.writer.write(_HEADER.pack(len(payload)))
        worker.writer.write(payload)
        return await future

    async def _read(self, worker: _Worker) -> None:
        """Answer the worker's tasks in order until it exits; then replace it."""
        assert self._changed is not None
        try:
            while True:
                (size,) = _HEADER.unpack(await worker.reader.readexactly(_HEADER.size))
                ok, value = pickle.loads(await worker.reader.readexactly(size))
                future = worker.pending.popleft()
                if not future.done():  # else the request gave up (deadline, client gone)
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                if not worker.pending and worker.reserved:
                    async with self._changed:
                        self._changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        await self._lost(worker)

    async def _lost(self, worker: _Worker) -> None:
        """Replace a worker that exited, then fail the tasks it took with it."""
        assert self._changed is not None
        worker.alive = False
        if not self._closed:
            # Started before the dead one leaves the list, so the pool is never empty.
            replacement = await self._start_worker()
            if self._closed:  # closed while it started
                replacement.writer.close()
                replacement.process.kill()
            else:
                await self._add(replacement)
        async with self._changed:
            with contextlib.suppress(ValueError):
                self._live.remove(worker)
            self._changed.notify_all()
        worker.writer.close()
        # Failed (so retried) before the process is reaped: reaping need not hold them up.
        while worker.pending:
            future = worker.pending.popleft()
            if not future.done():
                future.set_exception(_WorkerDied("a worker process exited"))
        await asyncio.to_thread(worker.process.join, _STOP_TIMEOUT_S)
        if not self._closed:
            log.warning(
                "a worker process exited (code %s); another took its place",
                worker.process.exitcode,
            )


class PoolThread:
    """The same pool for synchronous code: it runs on an event loop in a thread of its own."""

    def __init__(self, workers: int) -> None:
        self.pool = WorkerPool(workers)
        self.workers = workers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="worker-pool", daemon=True
        )

    def start(self) -> Self:
        """Start the loop thread and spawn the workers (they finish importing meanwhile)."""
        self._thread.start()
        self.run(self.pool.start()).result()
        return self

    def run(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine (one that awaits `self.pool`) on the pool's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def submit(self, fn: Callable[..., T], /, *args: Any) -> concurrent.futures.Future[T]:
        """`WorkerPool.submit` from synchronous code; the future can be cancelled."""
        return self.run(self.pool.submit(fn, *args))

    def close(self) -> None:
        """Stop the workers and the loop thread."""
        if self._thread.is_alive():
            self.run(self.pool.close()).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_with_parent(parent: int) -> None:
    """In a worker: exit once the parent is gone (SIGKILLed, it cannot stop its workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(conn: Connection, parent: int) -> None:
    """A worker's loop: run each task it receives and send back `(ok, value)`."""
    exit_with_parent(parent)
    import mplstm.core.preprocess  # noqa: F401 -- PyAV and numpy, before the first task

    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:  # the pool closed its end
            return
        try:
            fn, args = pickle.loads(message)
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:
            # The worker's traceback travels with the error, for the main process's log.
            exc.add_note("".join(traceback.format_exception(exc)))
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an answer or error that does not pickle
            data = pickle.dumps((False, RuntimeError(f"a worker's answer did not pickle: {exc!r}")))
        conn.send_bytes(data)
