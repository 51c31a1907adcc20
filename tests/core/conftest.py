"""Fixtures for core tests: real video files whose frames carry their own timestamp in pixels.

Each frame of a coded view shows its time since the view's first frame, in milliseconds,
as a 4x4 grid of black/white blocks (16 bits, most significant first). Blocks are a
quarter of the frame wide, so the code survives lossy codecs and resizing, and a test
can read back from the model input which moment of each view it is looking at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mplstm.core.video_writer import write_video

GRID = 4  # blocks per side
BITS = GRID * GRID
_WEIGHTS = 1 << np.arange(BITS - 1, -1, -1)


@dataclass(frozen=True)
class CodedView:
    """A written view and the time, relative to its first frame, that each frame shows."""

    path: Path
    times: np.ndarray  # seconds, [N]; frame i shows round(times[i] * 1000) ms

    @property
    def codes(self) -> np.ndarray:
        return np.round(self.times * 1000).astype(np.int64)


def _coded_frames(codes: np.ndarray, size: int = 64) -> np.ndarray:
    """uint8 [N, size, size]: each frame shows its code as a grid of black/white blocks."""
    bits = (codes[:, None] >> np.arange(BITS - 1, -1, -1)) & 1
    blocks = (bits * 255).astype(np.uint8).reshape(-1, GRID, GRID)
    cell = size // GRID
    return blocks.repeat(cell, axis=1).repeat(cell, axis=2)


def _read_codes(frames: np.ndarray) -> np.ndarray:
    """Codes shown by uint8 frames [..., C, H, W] (any H, W divisible by the grid)."""
    *lead, _, height, width = frames.shape
    gray = frames.mean(axis=-3)
    blocks = gray.reshape(*lead, GRID, height // GRID, GRID, width // GRID).mean(axis=(-3, -1))
    bits = (blocks > 127).reshape(*lead, BITS)
    return (bits * _WEIGHTS).sum(axis=-1)


@pytest.fixture
def coded_view(tmp_path: Path) -> Callable[..., CodedView]:
    """Factory: write a coded view at a fixed rate (fps, count) or at explicit times."""

    def write(
        name: str,
        *,
        fps: float = 25.0,
        count: int = 30,
        start: float = 0.0,
        times: np.ndarray | None = None,
        codec: str | None = None,
        size: int = 64,
    ) -> CodedView:
        rel = np.arange(count) / fps if times is None else np.asarray(times, np.float64)
        view = CodedView(tmp_path / name, rel)
        write_video(
            view.path,
            _coded_frames(view.codes, size),
            fps,
            codec=codec,
            timestamps=start + rel if times is not None else None,
            start_time=start,
        )
        return view

    return write


@pytest.fixture
def read_codes() -> Callable[[np.ndarray], np.ndarray]:
    """Codes shown by uint8 frames [..., C, H, W] (any H, W divisible by the grid)."""
    return _read_codes


@pytest.fixture
def coded_frames() -> Callable[..., np.ndarray]:
    """uint8 [N, size, size] frames showing the given codes (for files written by hand)."""
    return _coded_frames
