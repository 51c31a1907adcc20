"""What picks a backend (`BackendOptions`) and where inference runs (`Placement`).

The service builds both from its settings (`MPLSTM_BACKEND`, `MPLSTM_DEVICE`,
`MPLSTM_INTRA_OP_THREADS`, `MPLSTM_ORT_PROVIDERS`, `MPLSTM_VIDEO_INFERENCE`), the batch
scorer from its flags (`--backend`, `--device`, `--threads`, `--inference`): one
vocabulary, one rule.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class BackendChoice(enum.StrEnum):
    """Which inference backend runs a package."""

    AUTO = "auto"  # native TensorRT where an engine fits this GPU, else ONNX Runtime
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


@dataclass(frozen=True)
class BackendOptions:
    """How to open a package's backend."""

    backend: BackendChoice = BackendChoice.AUTO
    # "auto" (a GPU where one works, else the CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # ONNX Runtime intra-op threads (0: ONNX Runtime's default, one per physical core,
    # capped by a cgroup CPU quota).
    threads: int = 0
    # ONNX Runtime execution providers to ask for, best first; empty: chosen from `device`.
    providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", BackendChoice(self.backend))
        if not re.match(DEVICE_PATTERN, self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    @property
    def device_id(self) -> int:
        """The CUDA device index ("cuda:N" → N, else 0)."""
        return int(self.device.split(":")[1]) if ":" in self.device else 0


class Placement(enum.StrEnum):
    """Where a clip's inference runs once it is decoded."""

    # In the worker that decoded the clip where the backend computes on the CPU (batching
    # saves no CPU there, and the hand-over costs); else MAIN.
    AUTO = "auto"
    # In the main process: the service's dynamic batcher, the scorer's inference loop fed
    # by the decode workers. What a GPU wants: every clip in its batches.
    MAIN = "main"
    # In the decode workers, each with its own ONNX Runtime session on the CPU.
    WORKERS = "workers"


class PlacementError(ValueError):
    """A placement this backend or pool cannot honour; the message says what to change."""


def resolve_placement(choice: Placement, *, on_gpu: bool, workers: int, what: str) -> Placement:
    """MAIN or WORKERS for `choice`, given where the backend computes and the decode workers.

    `what` names the setting in messages (e.g. "MPLSTM_VIDEO_INFERENCE", "--inference").
    Workers run ONNX Runtime on the CPU: WORKERS on a GPU backend would answer from another
    runtime than the main process, so it is refused, as it is without workers.
    """
    choice = Placement(choice)
    if choice is Placement.WORKERS:
        if on_gpu:
            raise PlacementError(
                f"{what}=workers runs ONNX Runtime on the CPU in the decode workers, but this "
                f"backend runs on a GPU; use {what}=auto or main, or ask for device cpu"
            )
        if workers < 1:
            raise PlacementError(
                f"{what}=workers needs --decode-workers >= 1: worker processes to infer in"
            )
    if choice is Placement.AUTO:
        return Placement.WORKERS if workers and not on_gpu else Placement.MAIN
    return choice
