"""One live session's frames: a jitter buffer per view, online sync, utterances, steps.

A client streams each camera's frames with capture timestamps (seconds on the session's
clock). Frames wait in a small per-view buffer until every view has shown what it had at
the next step time; the step then takes, in every view, the frame nearest that time:
`core.sync`'s offline rule (`step_time`, `steps_before`, `nearest_frames`), applied as
frames arrive, so streaming a clip's files gives the steps `load_clip` gives them.

A view that has sent nothing for `silence_s` of stream time (other views' frames keep
coming) is masked for the steps it misses, and comes back when its frames do; both are
announced. An utterance runs from its start time to its end time: its steps are
`start + step_time(k)` for every k with that time before the end (at least one), and a
final prediction follows its last step. State (the model's h, c, ...) lives in the
continuous-batching scheduler (`step_scheduler`); this object only forms steps.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mplstm.core.ranking import top_k
from mplstm.core.sync import nearest_frame, step_time, steps_before
from mplstm.service.stream_protocol import POLICY, StreamClosed, bad


@dataclass(frozen=True)
class SessionLimits:
    """What a session may hold and how it syncs (MPLSTM_STREAM_* settings)."""

    silence_s: float = 0.3  # a view with no frame for this long (stream time) is masked
    max_skew_s: float = 2.0  # a frame further than this from the session's clock is refused
    buffer_frames: int = 96  # frames buffered per view
    max_pending_steps: int = 32  # steps formed and waiting for inference
    update_every: int = 1  # running predictions every K steps
    top_k: int = 5


@dataclass
class Utterance:
    """One utterance: its time range, its steps so far, what its views missed."""

    id: str
    start: float
    end: float | None = None
    formed: int = 0  # steps formed (the next step's index)
    done: int = 0  # steps run
    skipped: int = 0  # steps with every view masked: nothing to run
    masked_steps: Counter[str] = field(default_factory=Counter)
    probabilities: np.ndarray | None = None
    final_sent: bool = False

    def steps(self, fps: float) -> int | None:
        """How many steps the utterance has, once it has ended (at least one)."""
        return None if self.end is None else max(1, steps_before(self.end - self.start, fps))


@dataclass(frozen=True)
class Step:
    """A formed step: every view's frame at time t and which views are present."""

    utterance: Utterance
    index: int  # 0: the first step, whose state starts from zeros
    t: float
    frames: np.ndarray  # uint8 [V, C, H, W]
    mask: np.ndarray  # bool [V]
    ready_at: float  # time.perf_counter() when it formed: frame-to-update latency


class ViewBuffer:
    """One view's buffered frames in time order, and the newest time it ever sent."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.frames: list[np.ndarray] = []
        self.last: float | None = None

    def add(self, t: float, pixels: np.ndarray) -> None:
        self.times.append(t)
        self.frames.append(pixels)
        self.last = t

    def nearest(self, t: float) -> np.ndarray:
        """The buffered frame nearest `t` (ties: the earlier), as core's offline rule."""
        return self.frames[nearest_frame(self.times, t)]

    def keep_from(self, t: float) -> int:
        """Drop frames that cannot be nearest to any time >= t; returns how many went."""
        # Every frame before the last one at or before t (a buffer holds few frames).
        dropped = bisect.bisect_right(self.times, t) - 1
        if dropped > 0:
            del self.times[:dropped], self.frames[:dropped]
        return max(dropped, 0)

    def drop_oldest(self) -> None:
        del self.times[0], self.frames[0]


# A message to the client, or the close that ends the session.
Send = Callable[[dict[str, Any] | StreamClosed], None]


class LiveSession:
    """Frames in, steps out, messages to the client through `send`."""

    def __init__(
        self,
        view_names: tuple[str, ...],
        labels: tuple[str, ...],
        fps: float,
        frame_shape: tuple[int, int, int],
        allow_missing_views: bool,
        limits: SessionLimits,
        send: Send,
    ) -> None:
        self.view_names = view_names
        self.labels = labels
        self.fps = fps
        self.frame_shape = frame_shape
        self.allow_missing_views = allow_missing_views
        self.limits = limits
        self.send = send
        self.views = {name: ViewBuffer() for name in view_names}
        self.origin: float | None = None  # the first frame's time: a view's silence starts here
        self.clock: float | None = None  # the newest time any view sent
        self.utterances: deque[Utterance] = deque()  # not yet finished
        self.pending: deque[Step] = deque()
        self.masked: set[str] = set()
        self.closed = False
        self.slot = -1  # the scheduler's state row
        self.room = asyncio.Event()  # set when pending steps or buffers have room again
        self.room.set()

    def send_close(self, closed: StreamClosed) -> None:
        """End the session with `closed`'s code and reason (after what was sent before)."""
        self.send(closed)

    # -- client messages -------------------------------------------------------------------

    def add_frame(self, view: str, t: float, pixels: np.ndarray) -> None:
        """Buffer one frame; StreamClosed (1007) for an unknown view or a bad timestamp."""
        buffer = self.views.get(view)
        if buffer is None:
            raise bad(f"unknown view {view!r}; this model takes {list(self.view_names)}")
        if buffer.last is not None and t <= buffer.last:
            raise bad(
                f"view {view!r}: timestamps go backwards ({t:.3f} s after {buffer.last:.3f} s)"
            )
        if self.clock is not None and abs(t - self.clock) > self.limits.max_skew_s:
            raise bad(
                f"view {view!r}: t = {t:.3f} s is {abs(t - self.clock):.1f} s from the session "
                f"clock ({self.clock:.3f} s), outside the {self.limits.max_skew_s:g} s window"
            )
        if self.origin is None:
            self.origin = t
        self.clock = t if self.clock is None else max(self.clock, t)
        buffer.add(t, pixels)
        if not self._open() and len(buffer.times) > self.limits.buffer_frames:
            buffer.drop_oldest()  # between utterances only the newest frames matter

    def start(self, t: float, utterance: str | None) -> None:
        """Open an utterance at `t` (an open one ends there)."""
        previous = self.utterances[-1] if self.utterances else None
        if previous is not None and previous.end is None:
            self.end(t)
        if previous is not None and previous.end is not None and t < previous.end:
            raise bad(f"start at {t:.3f} s is before the previous utterance's end")
        if self.clock is not None and t < self.clock - self.limits.max_skew_s:
            raise bad(f"start at {t:.3f} s is far behind the session clock ({self.clock:.3f} s)")
        number = sum(1 for _ in self.utterances)
        self.utterances.append(Utterance(utterance or f"u{int(t * 1000)}-{number}", t))
        self.send({"type": "started", "utterance": self.utterances[-1].id, "t": t})

    def end(self, t: float) -> None:
        """End the open utterance at `t`; its final answer follows its last step."""
        current = self.utterances[-1] if self.utterances else None
        if current is None or current.end is not None:
            raise bad("end without an open utterance: send start first")
        if t <= current.start:
            raise bad(f"end at {t:.3f} s is not after the start ({current.start:.3f} s)")
        current.end = t
        self._finish_done()

    # -- steps -----------------------------------------------------------------------------

    def _open(self) -> bool:
        return bool(self.utterances) and self.utterances[-1].end is None

    def form_steps(self) -> None:
        """Form every step whose frames are all known (bounded by max_pending_steps)."""
        while self.utterances and len(self.pending) < self.limits.max_pending_steps:
            utterance = next((u for u in self.utterances if not _formed_all(u, self.fps)), None)
            if utterance is None:
                break
            if not self._next_step(utterance):
                break
        self._check_room()

    def _next_step(self, utterance: Utterance) -> bool:
        """Form (or skip) the utterance's next step; False while a view has yet to show it."""
        t = utterance.start + step_time(utterance.formed, self.fps)
        ended = utterance.end is not None
        present = []
        for name in self.view_names:
            state = self._view_at(self.views[name], t, ended)
            if state is None:
                return False  # this view has yet to show time t
            present.append(state)
        mask = np.array(present)
        self._announce(mask, t)
        index = utterance.formed
        utterance.formed += 1
        for name, ok in zip(self.view_names, present, strict=True):
            if not ok:
                utterance.masked_steps[name] += 1
        if not mask.any():
            utterance.skipped += 1  # nothing to run: every camera silent
            self._finish_done()
            return True
        if not mask.all() and not self.allow_missing_views:
            silent = [n for n, ok in zip(self.view_names, present, strict=True) if not ok]
            raise StreamClosed(
                POLICY,
                f"views {silent} sent nothing for {self.limits.silence_s:g} s; this model needs every view",
            )
        frames = np.zeros((len(self.view_names), *self.frame_shape), np.uint8)
        for v, name in enumerate(self.view_names):
            if present[v]:
                frames[v] = self.views[name].nearest(t)
                self.views[name].keep_from(t)
        self.pending.append(Step(utterance, index, t, frames, mask, time.perf_counter()))
        return True

    def _view_at(self, buffer: ViewBuffer, t: float, ended: bool) -> bool | None:
        """True: the view shows time t; False: masked (silent); None: not known yet."""
        if buffer.last is not None and buffer.last >= t:
            return True
        reference = buffer.last if buffer.last is not None else self.origin
        silent = (
            reference is None
            or self.clock is None
            or self.clock - reference >= self.limits.silence_s
        )
        if ended:
            # The end flushes: a view still sending takes its last frame, as offline.
            return buffer.last is not None and not silent
        return False if silent and self.clock is not None and self.clock >= t else None

    def _announce(self, mask: np.ndarray, t: float) -> None:
        for name, present in zip(self.view_names, mask, strict=True):
            if not present and name not in self.masked:
                self.masked.add(name)
                reason = f"no frame for {self.limits.silence_s:g} s"
                self.send(
                    {"type": "view", "view": name, "state": "masked", "t": t, "reason": reason}
                )
            elif present and name in self.masked:
                self.masked.discard(name)
                self.send({"type": "view", "view": name, "state": "restored", "t": t})

    # -- results ---------------------------------------------------------------------------

    def on_result(self, step: Step, probabilities: np.ndarray) -> float:
        """The scheduler ran `step`: send updates (every K steps) and finals; returns the
        frame-to-update latency in seconds (0 when no message went out)."""
        utterance = step.utterance
        utterance.done += 1
        utterance.probabilities = probabilities
        sent = False
        if (step.index + 1) % self.limits.update_every == 0:
            used = [n for n, ok in zip(self.view_names, step.mask, strict=True) if ok]
            self.send(
                {
                    "type": "update",
                    "utterance": utterance.id,
                    "step": step.index + 1,
                    "t": step.t,
                    "predictions": self._predictions(probabilities),
                    "views_used": used,
                }
            )
            sent = True
        sent = self._finish_done() or sent
        self._check_room()
        return time.perf_counter() - step.ready_at if sent else 0.0

    def _finish_done(self) -> bool:
        """Send the final answer of every utterance whose steps have all run."""
        sent = False
        while self.utterances:
            utterance = self.utterances[0]
            total = utterance.steps(self.fps)
            if total is None or utterance.done + utterance.skipped < total:
                break
            self.utterances.popleft()
            final = {
                "type": "final",
                "utterance": utterance.id,
                "steps": utterance.done,
                "t": utterance.end,
                "predictions": []
                if utterance.probabilities is None
                else self._predictions(utterance.probabilities),
                "masked_steps": dict(utterance.masked_steps),
            }
            self.send(final)
            sent = True
        return sent

    def _predictions(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        ranked = top_k(probabilities, self.labels, self.limits.top_k)
        return [{"label": label, "score": round(float(score), 6)} for label, score in ranked]

    # -- flow control ----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Frames held in this session's buffers."""
        return sum(len(b.times) for b in self.views.values())

    def full(self) -> bool:
        """Whether to stop reading the socket until the scheduler catches up (backpressure)."""
        if len(self.pending) >= self.limits.max_pending_steps:
            return True
        return any(len(b.times) >= self.limits.buffer_frames for b in self.views.values())

    def check_not_stuck(self) -> None:
        """1008 when a buffer is full and no step can form: waiting would never end."""
        if self.full() and not self.pending:
            longest = max(self.views, key=lambda name: len(self.views[name].times))
            raise StreamClosed(
                POLICY,
                f"jitter buffer full: view {longest!r} is {self.limits.buffer_frames} frames "
                "ahead of the others; send views interleaved in time",
            )

    def _check_room(self) -> None:
        if self.full():
            self.room.clear()
        else:
            self.room.set()


def _formed_all(utterance: Utterance, fps: float) -> bool:
    total = utterance.steps(fps)
    return total is not None and utterance.formed >= total
