"""The narrow interface every backend offers the batcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BackendUnavailableError(RuntimeError):
    """A backend that cannot serve this package here; the message says why."""


@dataclass(frozen=True)
class InferenceOutput:
    """One batch's results, row i for clip i."""

    logits: np.ndarray  # float32 [B, classes]
    probabilities: np.ndarray  # float32 [B, classes]


class Backend(Protocol):
    """A loaded model: uint8 clips [B, V, T, C, H, W] and bool masks [B, V] in, scores out."""

    name: str  # "onnxruntime" | "tensorrt"
    why: str  # how it was chosen (providers, engine), for the log and /v1/models
    on_gpu: bool  # False when it computes on the CPU

    def infer(self, clip: np.ndarray, view_mask: np.ndarray) -> InferenceOutput:
        """Run one batch; safe to call from a worker thread."""
        ...

    def close(self) -> None:
        """Release the session or engine."""
        ...


def dummy_batch(
    views: int, frames: int, channels: int, height: int, width: int, batch: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A zero clip batch with every view present, for warm-up."""
    clip = np.zeros((batch, views, frames, channels, height, width), np.uint8)
    return clip, np.ones((batch, views), bool)
