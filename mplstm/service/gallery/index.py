"""One model's gallery in memory: a matrix of unit templates, searched by exact cosine.

A person's template is the normalised mean of their unit embeddings (the rule export
set the thresholds with, `mplstm.core.openset.template`). Search is one matrix-vector
product over every person, [P, E] @ [E]: exact, and at 100k people of 128-d a few
milliseconds of BLAS (docs/benchmarks.md). Rows are kept dense (a removed person's row is
filled by the last one) in an array grown by doubling.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from mplstm.core.openset import template


class ModelIndex:
    """Templates of one model's people; safe to search and update from several threads."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._templates = np.zeros((capacity, dim), np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, person_id: object) -> bool:
        return person_id in self._row

    def people(self) -> list[str]:
        """The ids of everyone indexed."""
        with self._lock:
            return list(self._ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the template matrix (its allocated capacity)."""
        return self._templates.nbytes

    def set(self, person_id: str, vectors: Sequence[np.ndarray]) -> None:
        """Make `person_id`'s template the one of `vectors` (none: remove the person)."""
        usable = [v for v in vectors if v.shape == (self.dim,)]
        if not usable:
            self.remove(person_id)
            return
        row = template(np.stack(usable))
        with self._lock:
            index = self._row.get(person_id)
            if index is None:
                index = len(self._ids)
                if index == len(self._templates):
                    grown = np.zeros((2 * len(self._templates), self.dim), np.float32)
                    grown[:index] = self._templates
                    self._templates = grown
                self._ids.append(person_id)
                self._row[person_id] = index
            self._templates[index] = row

    def remove(self, person_id: str) -> None:
        """Forget a person (no-op when absent)."""
        with self._lock:
            index = self._row.pop(person_id, None)
            if index is None:
                return
            last = len(self._ids) - 1
            if index != last:
                moved = self._ids[last]
                self._ids[index] = moved
                self._row[moved] = index
                self._templates[index] = self._templates[last]
            self._ids.pop()
            self._templates[last] = 0

    def search(self, probe: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The `top_k` best people for a unit probe embedding, best first (ties by id)."""
        with self._lock:
            n = len(self._ids)
            if not n:
                return []
            scores = self._templates[:n] @ np.asarray(probe, np.float32)
            k = min(top_k, n)
            best = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
            found = [(self._ids[i], float(scores[i])) for i in best]
        return sorted(found, key=lambda pair: (-pair[1], pair[0]))

    def score(self, person_id: str, probe: np.ndarray) -> float | None:
        """Cosine of a unit probe with one person's template; None for an unknown person."""
        with self._lock:
            index = self._row.get(person_id)
            if index is None:
                return None
            return float(self._templates[index] @ np.asarray(probe, np.float32))
