"""Test-only entry point: `mplstm score ARGV` that stops at a chosen point until it is killed.

    python held_scorer.py POINT[:N] MARKER score ARGV...

On the N-th pass (default 1st) through POINT it writes MARKER and sleeps until killed,
so a test can SIGKILL it exactly there. Points: `decode` (a clip handed to decoding),
`write` (half of a chunk's rows consumed by the chunk file being written), `between`
(a chunk committed, the next not begun). The product's hooks are plain callables
(`mplstm.scoring.hooks`); this script is the only place that holds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from mplstm.cli import build_parser
from mplstm.scoring.hooks import ScoringHooks
from mplstm.scoring.rows import ScoreRow

POINTS = ("decode", "write", "between")


class Holds:
    """Counts passes through each point and holds at the chosen one."""

    def __init__(self, point: str, nth: int, marker: Path) -> None:
        if point not in POINTS:
            raise SystemExit(f"unknown point {point!r}; use one of {POINTS}")
        self.point, self.nth, self.marker = point, nth, marker
        self._passes = dict.fromkeys(POINTS, 0)

    def hooks(self) -> ScoringHooks:
        return ScoringHooks(
            clip_submitted=lambda: self._pass("decode"),
            writing=self._writing,
            chunk_committed=lambda: self._pass("between"),
        )

    def _pass(self, point: str) -> bool:
        """Count a pass; hold if it is the chosen one."""
        self._passes[point] += 1
        if point == self.point and self._passes[point] == self.nth:
            self.marker.write_text(f"{point}:{self.nth} pid {os.getpid()}\n")
            while True:
                time.sleep(3600)
        return False

    def _writing(self, rows: Sequence[ScoreRow]) -> Iterable[ScoreRow]:
        def rows_then_hold() -> Iterator[ScoreRow]:
            yield from rows[: len(rows) // 2]
            self._pass("write")
            yield from rows[len(rows) // 2 :]

        return rows_then_hold()


def main(argv: list[str]) -> int:
    spec, marker, *score_argv = argv
    point, _, nth = spec.partition(":")
    args = build_parser().parse_args(score_argv)
    return args.func(args, hooks=Holds(point, int(nth or 1), Path(marker)).hooks())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
