"""Continuous batching of live sessions' steps (DESIGN.md §9; vLLM's scheduler, Triton's
sequence batcher with implicit state).

One scheduler per live model. Each session owns a row (a slot) of the model's state,
kept here as one array per state tensor, [max_sessions, ...]. At each tick the loop takes
the next formed step of every session that has one (round robin, at most `max_batch`;
waiting at most `max_delay_s` for a fuller batch), gathers their frames and state rows,
runs the step model once on the batch in the inference thread (ONNX Runtime releases
the GIL), scatters the new state back and hands each session its probabilities. A
session's first step of an utterance starts from zeros. A session advances at most one
step per tick, so one that floods cannot starve the others; admission (`admit`) is
bounded by `max_sessions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mplstm.inference.step import StepBackend
from mplstm.service.sessions import LiveSession, Step
from mplstm.service.stream_metrics import StreamMetrics
from mplstm.service.stream_protocol import GOING_AWAY, SERVER_ERROR, StreamClosed

log = logging.getLogger(__name__)


class StepScheduler:
    """Admits sessions, batches their steps, keeps their state."""

    def __init__(
        self,
        model: str,
        backend: StepBackend,
        *,
        max_sessions: int,
        max_batch: int,
        max_delay_s: float,
        metrics: StreamMetrics,
    ) -> None:
        self.model = model
        self.backend = backend
        self.max_sessions = max_sessions
        self.max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._metrics = metrics
        self._state = backend.zero_state(max_sessions)
        self._free = list(range(max_sessions - 1, -1, -1))
        self._sessions: dict[int, LiveSession] = {}
        self._ready: deque[LiveSession] = deque()
        self._queued: set[int] = set()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"steps-{model}")
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        """Sessions admitted and not yet released."""
        return len(self._sessions)

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"steps-{self.model}"
        )

    def admit(self, session: LiveSession) -> bool:
        """Give `session` a state row; False when `max_sessions` are live already."""
        if not self._free:
            return False
        session.slot = self._free.pop()
        self._sessions[session.slot] = session
        self._metrics.sessions.labels(self.model).set(len(self._sessions))
        return True

    def release(self, session: LiveSession) -> None:
        """The session ended: its row is free (a new session's first step zeroes it)."""
        session.closed = True
        if self._sessions.pop(session.slot, None) is session:
            self._free.append(session.slot)
        self._metrics.sessions.labels(self.model).set(len(self._sessions))

    def notify(self, session: LiveSession) -> None:
        """`session` may have formed steps: queue it for the next tick."""
        if session.pending and not session.closed and id(session) not in self._queued:
            self._queued.add(id(session))
            self._ready.append(session)
            self._wake.set()

    async def stop(self) -> None:
        """Stop the loop; every live session is told to reconnect (1001)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for session in list(self._sessions.values()):
            session.send_close(
                StreamClosed(GOING_AWAY, f"model {self.model!r} is unloading; reconnect")
            )
            self.release(session)
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready:
                if len(self._ready) < self.max_batch and self._max_delay_s > 0:
                    await asyncio.sleep(self._max_delay_s)  # a fuller batch, bounded delay
                batch = self._take()
                if batch:
                    await self._run(batch)

    def _take(self) -> list[LiveSession]:
        batch: list[LiveSession] = []
        while self._ready and len(batch) < self.max_batch:
            session = self._ready.popleft()
            self._queued.discard(id(session))
            if not session.closed and session.pending:
                batch.append(session)
        return batch

    async def _run(self, sessions: list[LiveSession]) -> None:
        steps = [s.pending.popleft() for s in sessions]
        slots = np.array([s.slot for s in sessions])
        state = [rows[slots] for rows in self._state]  # gathered copies
        for i, step in enumerate(steps):
            if step.index == 0:  # an utterance starts from zero state
                for tensor in state:
                    tensor[i] = 0
        clip = np.stack([step.frames for step in steps])[:, :, None]  # [B, V, 1, C, H, W]
        mask = np.stack([step.mask for step in steps])
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._executor, self.backend.run, clip, mask, state)
        except Exception:  # a runtime failure on checked input is a server fault
            log.exception("live model %s: step inference failed", self.model)
            for session in sessions:
                session.send_close(
                    StreamClosed(SERVER_ERROR, "inference failed (a bug; see the log)")
                )
            return
        for rows, new in zip(self._state, out.state, strict=True):
            rows[slots] = new
        self._deliver(sessions, steps, out.probabilities)

    def _deliver(
        self, sessions: list[LiveSession], steps: list[Step], probabilities: np.ndarray
    ) -> None:
        metrics = self._metrics
        metrics.batch_size.labels(self.model).observe(len(sessions))
        metrics.steps.labels(self.model).inc(len(sessions))
        for i, (session, step) in enumerate(zip(sessions, steps, strict=True)):
            if session.closed:
                continue
            latency = session.on_result(step, probabilities[i])
            if latency > 0:
                metrics.latency.labels(self.model).observe(latency)
            for name, present in zip(session.view_names, step.mask, strict=True):
                if not present:
                    metrics.masked_steps.labels(self.model, name).inc()
            self.notify(session)
        metrics.buffered.labels(self.model).set(sum(s.buffered for s in self._sessions.values()))
