"""Frames one at a time, for live sessions: still images in, a camera's stream out.

`decode_image` turns one JPEG or PNG (a frame a live client sends) into the model's uint8
[C, H, W]; `iter_frames` decodes a source (a file, a V4L2 device, an RTSP/HTTP/UDP URL:
anything PyAV opens) frame by frame with presentation timestamps, as the streaming
client sends them. Both scale and crop with the video path's code (`FrameScaler`), so a
streamed frame is the frame `load_clip` would have taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from mplstm.core.decode import FrameScaler
from mplstm.core.errors import ClipTooLargeError, CorruptVideoError, UnreadableContainerError
from mplstm.core.limits import DecodeLimits

IMAGE_CODECS = {"jpeg": "mjpeg", "png": "png"}


def decode_image(
    data: bytes, image_format: str, scaler: FrameScaler, limits: DecodeLimits | None = None
) -> np.ndarray:
    """One JPEG or PNG → uint8 [C, H, W]; a ClipError when it does not decode or is too big."""
    codec_name = IMAGE_CODECS.get(image_format)
    if codec_name is None:
        raise UnreadableContainerError(
            f"unknown image format {image_format!r}; send {sorted(IMAGE_CODECS)} or raw"
        )
    limits = limits or DecodeLimits()
    codec = av.CodecContext.create(codec_name, "r")
    try:
        frames = codec.decode(av.Packet(data)) + codec.decode(None)
    except (av.error.FFmpegError, ValueError) as exc:
        raise CorruptVideoError(f"the {image_format} image does not decode ({exc})") from exc
    if not frames:
        raise CorruptVideoError(f"the {image_format} image does not decode (no picture in it)")
    frame = frames[0]
    if frame.width * frame.height > limits.max_pixels:
        raise ClipTooLargeError(
            f"the image is {frame.width}x{frame.height}, over {limits.max_pixels} pixels"
        )
    return scaler(frame)


@dataclass(frozen=True)
class TimedFrame:
    """One decoded frame at the model's size and its presentation time in seconds."""

    t: float  # from the stream's first frame (core's rule: each view starts at 0)
    pixels: np.ndarray  # uint8 [C, H, W]


def iter_frames(
    source: str, scaler: FrameScaler, options: dict[str, str] | None = None
) -> Iterator[TimedFrame]:
    """Decode `source` (a path or any URL PyAV opens) frame by frame, as it arrives."""
    try:
        container = av.open(source, mode="r", options=options or {}, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise UnreadableContainerError(f"cannot open {source!r} ({exc})") from exc
    with container:
        streams = container.streams.video
        if not streams:
            raise UnreadableContainerError(f"{source!r} holds no video stream")
        stream = streams[0]
        first: float | None = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            first = frame.time if first is None else first
            yield TimedFrame(float(frame.time - first), scaler(frame))


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """uint8 [C, H, W] → one JPEG or PNG (what a client sends in place of raw pixels)."""
    codec_name = IMAGE_CODECS.get(image_format)
    if codec_name is None:
        raise ValueError(f"unknown image format {image_format!r}; use {sorted(IMAGE_CODECS)}")
    channels, height, width = pixels.shape
    if channels == 1:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[0]), format="gray")
    else:
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(pixels.transpose(1, 2, 0)), format="rgb24"
        )
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuvj420p" if image_format == "jpeg" else ("gray" if channels == 1 else "rgb24")
    codec.time_base = Fraction(1, 25)
    packets = codec.encode(frame.reformat(format=codec.pix_fmt)) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)
