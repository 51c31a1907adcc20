"""Test hooks: stop the scorer at a named point so a test can SIGKILL it exactly there.

`MPLSTM_SCORE_TEST_HOLD=POINT[:N]` makes the N-th time (default 1st) the scorer passes
POINT write the file named by `MPLSTM_SCORE_TEST_HOLD_FILE` and sleep until killed.
Points: `decode` (clips submitted to the decode workers, their rows not written),
`write` (half of a chunk's rows written to its temporary file), `between` (a chunk
committed, the next not begun). Unset, every hook is a no-op.

`MPLSTM_SCORE_TEST_CRASH=ID` makes a decode worker process die (`os._exit`) whenever
it is given the clip ID, as a decoder crash on a hostile file would.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

HOLD_ENV = "MPLSTM_SCORE_TEST_HOLD"
HOLD_FILE_ENV = "MPLSTM_SCORE_TEST_HOLD_FILE"
CRASH_ENV = "MPLSTM_SCORE_TEST_CRASH"
POINTS: tuple[str, ...] = ("decode", "write", "between")


class Holds:
    """Counts passes through each point and holds at the configured one."""

    def __init__(self, point: str | None = None, nth: int = 1, marker: Path | None = None):
        if point is not None and point not in POINTS:
            raise ValueError(f"{HOLD_ENV}: unknown point {point!r}; use one of {POINTS}")
        self.point = point
        self.nth = nth
        self.marker = marker
        self._passes = dict.fromkeys(POINTS, 0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Holds:
        spec = environ.get(HOLD_ENV, "").strip()
        if not spec:
            return cls()
        point, _, nth = spec.partition(":")
        marker = environ.get(HOLD_FILE_ENV)
        return cls(point, int(nth or 1), Path(marker) if marker else None)

    def hook(self, point: str) -> Callable[[], None]:
        """A callable that passes `point` once per call."""
        return lambda: self.passing(point)

    def passing(self, point: str) -> None:
        """Pass `point`; hold forever (until killed) if it is the configured pass."""
        self._passes[point] += 1
        if point != self.point or self._passes[point] != self.nth:
            return
        if self.marker is not None:
            self.marker.write_text(f"{point}:{self.nth} pid {os.getpid()}\n")
        while True:
            time.sleep(3600)


def crash_if_told(clip_id: str) -> None:
    """In a worker process given the clip named by MPLSTM_SCORE_TEST_CRASH: die at once."""
    if os.environ.get(CRASH_ENV) == clip_id and multiprocessing.parent_process() is not None:
        os._exit(70)
