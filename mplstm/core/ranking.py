"""How class scores become a ranked answer: one rule for the service and the batch scorer."""

from __future__ import annotations

import numpy as np


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """The k most probable (label, score) pairs, best first; ties keep label order."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]
