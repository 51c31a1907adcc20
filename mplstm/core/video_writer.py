"""Write frame arrays to real video files with PyAV (synthetic data, test corpora, examples)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Exact for 24/25/30 and NTSC (x/1001) rates; MPEG-4 Part 2 needs a denominator < 2**16.
_TIME_BASE = Fraction(1, 30_000)


@dataclass(frozen=True)
class Codec:
    """A codec and the pixel format and options it is written with."""

    name: str
    pix_fmt: str
    options: tuple[tuple[str, str], ...] = ()


# The container/codec pairs the project writes and reads back (see tests/core).
CODECS: dict[str, Codec] = {
    "h264": Codec("libx264", "yuv420p", (("preset", "ultrafast"), ("crf", "18"))),
    "mpeg4": Codec("mpeg4", "yuv420p", (("b", "2000000"),)),
    "mjpeg": Codec("mjpeg", "yuvj420p"),
    "vp9": Codec("libvpx-vp9", "yuv420p", (("deadline", "realtime"), ("cpu-used", "8"))),
    "ffv1": Codec("ffv1", "yuv420p"),
}
DEFAULT_CODEC_FOR_SUFFIX = {".mp4": "h264", ".avi": "mjpeg", ".mkv": "ffv1", ".webm": "vp9"}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str | None = None,
    timestamps: Sequence[float] | None = None,
    start_time: float = 0.0,
) -> Path:
    """Encode uint8 frames [T, H, W] (gray) or [T, H, W, 3] (RGB) into `path`.

    `timestamps` (seconds, increasing) gives each frame its own presentation time,
    which makes a variable-frame-rate file; otherwise frames are spaced 1/fps apart
    starting at `start_time` (a stream that starts late).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(
            f"frames must be non-empty uint8 [T,H,W(,3)], got {frames.dtype} {frames.shape}"
        )
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    height, width = frames.shape[1:3]
    if timestamps is None:
        timestamps = start_time + np.arange(len(frames)) / fps
    if len(timestamps) != len(frames):
        raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
    spec = CODECS[codec or DEFAULT_CODEC_FOR_SUFFIX.get(path.suffix.lower(), "h264")]
    # AVI counts time in frame slots: a fine time base there writes thousands of empty slots.
    time_base = (
        1 / Fraction(fps).limit_denominator(1001) if path.suffix.lower() == ".avi" else _TIME_BASE
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(spec.name, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = _even(width), _even(height)
        stream.pix_fmt = spec.pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = dict(spec.options)
        last_pts = -1
        for image, t in zip(frames, timestamps, strict=True):
            frame = av.VideoFrame.from_ndarray(_pad_even(image), format="rgb24")
            # Coarse time bases (AVI) can round two frames onto one slot: keep pts increasing.
            last_pts = frame.pts = max(round(t / time_base), last_pts + 1)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _even(n: int) -> int:
    return n + (n % 2)


def _pad_even(image: np.ndarray) -> np.ndarray:
    """4:2:0 codecs need even sizes; repeat the last row/column rather than fail."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return np.ascontiguousarray(image)
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
