"""Decode limits: what one view may cost before it is refused (bytes, time, frames, pixels)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeLimits:
    """Per-view limits, checked while decoding so a hostile file is refused early.

    Defaults admit far more than a lip-reading or identity clip needs (a minute, 3000
    frames, 4K frames, 64 MiB) and refuse what only a decompression bomb would contain.
    """

    # Container size; checked before FFmpeg reads a byte, for paths, bytes and file objects.
    max_bytes: int = 64 * 2**20
    # Presentation-time span of the decoded frames, from the stream's first timestamp.
    max_duration_s: float = 60.0
    # Decoded frames (never the header's count): the bomb is refused at frame max_frames + 1.
    max_frames: int = 3000
    max_width: int = 4096
    max_height: int = 4096
    # width x height; 4096x4096 itself fits. Also caps the frames FFmpeg decodes while probing.
    max_pixels: int = 4096 * 4096
    # Long side / short side. Frames are scaled so the short side fits the model, so a
    # 4096x16 sliver would become a huge frame; no camera makes one.
    max_aspect_ratio: float = 8.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_frames", "max_width", "max_height", "max_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DecodeLimits.{name} must be positive, got {getattr(self, name)}")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(
                f"DecodeLimits.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}"
            )
        if not self.max_duration_s > 0:
            raise ValueError(
                f"DecodeLimits.max_duration_s must be positive, got {self.max_duration_s}"
            )
