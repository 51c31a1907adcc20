"""Worker processes driven from the event loop: one socket each, no executor threads.

`concurrent.futures.ProcessPoolExecutor` passes every task through two threads of the
main process (its manager and its queue feeder) and hands the answer back to the event
loop from a third: GIL hand-overs and wake-up writes on each request. Measured on the
2-core dev host with workers that do nothing (32 clients, 5-view uploads), the service's
main process spent 1.5 ms of CPU per request through the executor, and 0.7 ms with the
same work done inline. Here the event loop writes each task to a worker's socket and
reads the answer itself.

Workers are spawned, not forked (the main process holds ONNX Runtime's thread pool),
and run `_serve`: receive `(fn, args)`, run it, send back `(ok, value)`. A task goes to
the worker with the fewest tasks in flight; a worker answers in order. A worker that
dies (a decoder crash on a hostile file) fails only its own tasks, with
BrokenProcessPool, and a fresh worker takes its place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import traceback
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from mplstm.core.worker_processes import exit_with_parent

log = logging.getLogger(__name__)
T = TypeVar("T")
# multiprocessing.Connection's framing (a signed 32-bit big-endian length), which the
# worker's end of the socket speaks through `recv_bytes` and `send_bytes`.
_HEADER = struct.Struct("!i")
_STOP_TIMEOUT_S = 5.0
_READ_BUFFER = 4 * 2**20


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # Futures of the tasks sent and not yet answered, oldest first.
    pending: collections.deque[asyncio.Future[Any]] = field(default_factory=collections.deque)


class WorkerPool:
    """A fixed number of spawned worker processes; `submit` from the event loop."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._live: list[_Worker] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> WorkerPool:
        """Spawn every worker; they import their modules in the background (a second or so)."""
        for _ in range(self.workers):
            await self._spawn()
        return self

    async def submit(self, fn: Callable[..., T], /, *args: Any) -> T:
        """`fn(*args)` in a worker; `fn`, its arguments and its result must pickle."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        return await self._send(min(self._live, key=lambda w: len(w.pending)), fn, args)

    async def run_on_each(self, fn: Callable[..., T], /, *args: Any) -> list[T]:
        """`fn(*args)` once in every worker."""
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

    async def _spawn(self) -> None:
        self._add(await self._start_worker())

    async def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve, args=(child, os.getpid()), name="mplstm-worker", daemon=True
        )
        process.start()
        child.close()
        sock = socket.socket(fileno=os.dup(parent.fileno()))  # a socketpair end: AF_UNIX
        parent.close()
        # A buffer that holds a decoded clip whole (batcher path), rather than pausing the
        # socket several times per answer.
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_BUFFER)
        return _Worker(process, reader, writer)

    def _add(self, worker: _Worker) -> None:
        self._live.append(worker)
        task = asyncio.get_running_loop().create_task(self._read(worker), name="worker-reader")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _send(self, worker: _Worker, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        worker.pending.append(future)
        worker.writer.write(_HEADER.pack(len(payload)))
        worker.writer.write(payload)
        return await future

    async def _read(self, worker: _Worker) -> None:
        """Answer the worker's tasks in order until it exits; then replace it."""
        try:
            while True:
                (size,) = _HEADER.unpack(await worker.reader.readexactly(_HEADER.size))
                ok, value = pickle.loads(await worker.reader.readexactly(size))
                future = worker.pending.popleft()
                if future.done():  # the request gave up (deadline, client gone)
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        await self._lost(worker)

    async def _lost(self, worker: _Worker) -> None:
        """Replace a worker that exited, then fail the tasks it took with it."""
        if not self._closed:
            # Started before the dead one leaves the list, so the pool is never empty;
            # tasks sent to the dead one meanwhile fail below like the others.
            replacement = await self._start_worker()
            if self._closed:  # closed while it started
                replacement.writer.close()
                replacement.process.kill()
            else:
                self._add(replacement)
        with contextlib.suppress(ValueError):
            self._live.remove(worker)
        worker.writer.close()
        # Its tasks are retried now; reaping the process need not hold them up.
        while worker.pending:
            future = worker.pending.popleft()
            if not future.done():
                future.set_exception(BrokenProcessPool("a worker process exited"))
        await asyncio.to_thread(worker.process.join, _STOP_TIMEOUT_S)
        if not self._closed:
            log.warning(
                "a worker process exited (code %s); another took its place",
                worker.process.exitcode,
            )


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
