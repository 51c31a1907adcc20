"""What every part of the kit shares: the run context, progress lines, skips and timing."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository root
DEFAULT_PACKAGE = ROOT / "models" / "demo-lipreading" / "1"
EXAMPLES = ROOT / "models" / "examples" / "lipreading"


class Skip(Exception):  # reads as `raise Skip("why")`
    """A part (or case) that cannot run here; the message says why."""


@dataclass
class Context:
    """One run of the kit: where it runs, its budget, and how big its cases are."""

    dry_run: bool
    out: Path
    budget_s: float
    package: Path = DEFAULT_PACKAGE
    started: float = field(default_factory=time.monotonic)
    device: str = "cpu"  # torch device type of the figures: "cuda", or "cpu" standing in
    device_label: str = "cpu"  # what produced the device figures, in words

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def out_of_time(self, need_s: float = 0.0) -> bool:
        """True when less than `need_s` seconds of the budget are left."""
        return self.left() < need_s

    def log(self, message: str) -> None:
        """A progress line on stderr: a GPU host may be lent for minutes only."""
        print(f"[gpu-check {self.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)


def display_path(path: Path) -> str:
    """`path` relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def cpu_label(what: str) -> str:
    """The device label of a CPU figure that is a CPU figure by design (ONNX Runtime CPU)."""
    return f"cpu ({what})"


def time_ms(
    fn: Callable[[], Any], *, cuda_events: bool, warmup: int, reps: int, rounds: int
) -> float:
    """Median over `rounds` of the mean ms per call of `fn` over `reps` calls, after warm-up.

    cuda_events: CUDA events on the current stream (work `fn` queues on the GPU): a call
    that leaves the GPU idle while Python launches its next op (the eager recurrence) is
    charged for that idle time, which is what it costs. Otherwise wall time, for calls
    that return when done (ONNX Runtime's run, the CPU stand-in).
    """
    for _ in range(warmup):
        fn()
    samples = []
    if cuda_events:
        import torch

        torch.cuda.synchronize()
        for _ in range(rounds):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / reps)
    else:
        samples = [wall_ms(fn, reps) for _ in range(rounds)]
    return statistics.median(samples)


def wall_ms(fn: Callable[[], Any], reps: int) -> float:
    """Mean wall-clock ms per call of a synchronous `fn` (ONNX Runtime, the CPU)."""
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def error_text(exc: BaseException) -> str:
    """One line for the report: the exception's type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")
