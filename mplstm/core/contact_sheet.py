"""A views x frames contact sheet of a `Clip`: exactly the pixels a model will see, as a PNG."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from mplstm.core.clip import Clip

_GAP_RGB = (40, 40, 40)
_CHECKER = 8  # px; absent views show a checkerboard, so an all-black view is not mistaken for one


def contact_sheet(clip: Clip, *, scale: int = 1, gap: int = 2) -> np.ndarray:
    """uint8 RGB image [rows, cols, 3]: one row per view, one column per sampled frame."""
    frames = clip.frames.transpose(0, 1, 3, 4, 2)  # [V, T, H, W, C]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = frames.repeat(scale, axis=2).repeat(scale, axis=3)
    views, steps, height, width, _ = frames.shape
    absent = ~np.asarray(clip.view_mask, bool)
    if absent.any():
        yy, xx = np.indices((height, width))
        checker = np.where(((yy // _CHECKER + xx // _CHECKER) % 2)[..., None] == 0, 96, 160)
        frames[absent] = checker.astype(np.uint8)
    cells = np.empty((views, steps, height + gap, width + gap, 3), np.uint8)
    cells[:] = _GAP_RGB
    cells[:, :, :height, :width] = frames
    # [V, H+g, T, W+g, 3] -> one image; then the top and left borders.
    grid = cells.transpose(0, 2, 1, 3, 4).reshape(views * (height + gap), steps * (width + gap), 3)
    return np.pad(grid, ((gap, 0), (gap, 0), (0, 0)), constant_values=_GAP_RGB[0])


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 RGB image [H, W, 3] as an 8-bit PNG (no filter, zlib level 6)."""
    path = Path(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_png takes uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    # Each scanline starts with its filter type (0: none).
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = b"\x89PNG\r\n\x1a\n" + b"".join(
        _chunk(kind, data)
        for kind, data in (
            (b"IHDR", header),
            (b"IDAT", zlib.compress(rows.tobytes(), 6)),
            (b"IEND", b""),
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
