"""Callables a caller passes to `mplstm score`'s run to watch it, or stop it at a chosen point.

The product never sets them: tests pass them in to kill a run at an exact moment or to
crash a worker on a chosen clip (fault injection by callable, never by an environment
variable the product reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mplstm.inference.tasks import BeforeDecode
from mplstm.scoring.rows import ScoreRow


def _nothing() -> None:
    pass


def _as_is(rows: Sequence[ScoreRow]) -> Iterable[ScoreRow]:
    return rows


@dataclass(frozen=True)
class ScoringHooks:
    """What runs at each stage of a scoring run; every default does nothing."""

    # After each clip is handed to decoding.
    clip_submitted: Callable[[], None] = _nothing
    # In the process that decodes, with a clip's views, before decoding (must pickle).
    before_decode: BeforeDecode | None = None
    # The rows of a chunk, as the chunk file consumes them while it is written.
    writing: Callable[[Sequence[ScoreRow]], Iterable[ScoreRow]] = _as_is
    # After each chunk is committed.
    chunk_committed: Callable[[], None] = _nothing


NO_HOOKS = ScoringHooks()
