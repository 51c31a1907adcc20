"""The accuracy of a model on every subset of its views: how much a failed camera costs.

`mplstm evaluate` measures it on a checkpoint; export (and `mplstm export
--view-accuracy`) measures it on the exported model and stores it in the package
manifest as a `ViewSubsetTable`, from which the service and the scorer answer
"expected accuracy" for exactly the views a clip was predicted from.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def view_subsets(num_views: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of view indices: singles first, then pairs, ..., all."""
    return [
        combo
        for k in range(1, num_views + 1)
        for combo in itertools.combinations(range(num_views), k)
    ]


@dataclass(frozen=True)
class SubsetAccuracy:
    """Accuracy with exactly these views present (the others masked as absent)."""

    views: tuple[str, ...]  # in model order
    accuracy: float


@dataclass(frozen=True)
class ViewSubsetTable:
    """Accuracy of every view subset, and the data it was measured on."""

    data: str  # the clip manifest measured on
    split: str
    clips: int
    runtime: str  # what ran the model, e.g. "onnxruntime 1.23 CPUExecutionProvider"
    subsets: tuple[SubsetAccuracy, ...]

    def accuracy(self, views: Iterable[str]) -> float | None:
        """The accuracy measured with exactly `views` present; None if not in the table."""
        wanted = frozenset(views)
        return next((s.accuracy for s in self.subsets if frozenset(s.views) == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "split": self.split,
            "clips": self.clips,
            "runtime": self.runtime,
            "subsets": [{"views": list(s.views), "accuracy": s.accuracy} for s in self.subsets],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ViewSubsetTable:
        return cls(
            data=str(values["data"]),
            split=str(values["split"]),
            clips=int(values["clips"]),
            runtime=str(values.get("runtime", "")),
            subsets=tuple(
                SubsetAccuracy(tuple(s["views"]), float(s["accuracy"])) for s in values["subsets"]
            ),
        )
