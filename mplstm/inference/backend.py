"""The narrow interface every backend offers: uint8 clips and view masks in, scores out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mplstm.core.package import PackageManifest


class BackendUnavailableError(RuntimeError):
    """A backend that cannot serve this package here; the message says why."""


@dataclass(frozen=True)
class InferenceOutput:
    """One batch's results, row i for clip i."""

    logits: np.ndarray  # float32 [B, classes]
    probabilities: np.ndarray  # float32 [B, classes]
    embedding: np.ndarray | None = None  # float32 [B, E], identity models with an embedding


class Backend(Protocol):
    """A loaded model: uint8 clips [B, V, T, C, H, W] and bool masks [B, V] in, scores out."""

    name: str  # "onnxruntime" | "tensorrt"
    description: str  # what runs it (runtime, provider or engine), for the log and /v1/models
    on_gpu: bool  # False when it computes on the CPU

    def infer(self, clip: np.ndarray, view_mask: np.ndarray) -> InferenceOutput:
        """Run one batch; safe to call from a worker thread."""
        ...

    def close(self) -> None:
        """Release the session or engine."""
        ...


def shape_groups(arrays: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of `arrays` grouped by shape, in first-seen order: one batch per group.

    Clips of a live package (fixed-rate sampling) differ in length T, so a batch of them
    runs as one inference per length.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        groups.setdefault(array.shape, []).append(i)
    return list(groups.values())


def dummy_batch(manifest: PackageManifest, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A zero clip batch of the package's shape with every view present, for warm-up."""
    pre = manifest.preprocess
    shape = (batch, len(manifest.view_names), pre.frames, pre.channels, pre.height, pre.width)
    return np.zeros(shape, np.uint8), np.ones((batch, len(manifest.view_names)), bool)


def warm_up(backend: Backend, manifest: PackageManifest) -> None:
    """Run one dummy clip, so the first request does not pay for lazy initialisation.

    BackendUnavailableError (the backend closed) when the runtime fails on it.
    """
    try:
        backend.infer(*dummy_batch(manifest))
    except Exception as exc:  # whatever the runtime raises, the model cannot serve
        backend.close()
        raise BackendUnavailableError(f"warm-up inference failed: {exc}") from exc
