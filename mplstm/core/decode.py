"""Decode one view with PyAV into small frames and their presentation timestamps.

Each frame is scaled in swscale (short side to the target) as soon as it is decoded, so
a view never holds full-resolution frames; `DecodedView.take` centre-crops (and, for RGB,
colour-converts) only the frames a caller picks. Limits are checked
before FFmpeg reads the file (bytes), before any frame is decoded (width x height) and
at every frame (count, timestamp span). Header frame counts and rates are never used.

A stream that breaks midway (truncated file, damaged packet) keeps the frames decoded
before the break and is marked `truncated`; the sync tolerance then decides whether
the clip is still usable. One that yields no frame at all is a `CorruptVideoError`.
Every `av.error.FFmpegError` becomes a `ClipError` subclass.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from mplstm.core.clip import ViewInfo
from mplstm.core.errors import (
    ClipTooLargeError,
    ClipTooLongError,
    CorruptVideoError,
    NoVideoStreamError,
    StillImageError,
    UnreadableContainerError,
)
from mplstm.core.limits import DecodeLimits

# A path, the file's bytes, or a binary file object read from its start.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

# Each frame is scaled as soon as it is decoded, into the cheapest format to scale:
# gray for one channel, the decoder's own (YUV) format for RGB. Colour conversion, which
# costs more than the scaling, then runs only on the T frames a caller picks.
_SCALED_FORMAT = {1: "gray", 3: None}
# RGB as packed rgb24, transposed to [C, H, W]: swscale's planar gbrp output leaves
# columns past the last multiple of its SIMD width unwritten at some widths (24, 88, ...),
# so the same frame gave different pixels from call to call.
_FINAL_FORMAT = {1: "gray", 3: "rgb24"}
# Area averaging: the usual case is a large frame shrunk to a small model input.
_INTERPOLATION = Interpolation.AREA
_MIB = 2**20
DECODER_THREADS = 1


@dataclass(frozen=True)
class DecodedView:
    """Every decoded frame of one view, kept small, with its timestamp; `take` gives arrays."""

    timestamps: np.ndarray  # float64 [N], seconds from the first frame (so [0] == 0)
    info: ViewInfo
    shape: tuple[int, int, int]  # (C, H, W) of each frame `take` returns
    # Frames in presentation order, scaled to cover H x W; not yet cropped or converted.
    small: list[av.VideoFrame] = field(repr=False)

    def take(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """uint8 [len(indices), C, H, W], centre-cropped (every frame when indices is None)."""
        channels, height, width = self.shape
        picked = self.small if indices is None else [self.small[i] for i in indices]
        out = np.empty((len(picked), channels, height, width), np.uint8)
        scaler = _Scaler(self.shape, _FINAL_FORMAT[channels])
        for k, frame in enumerate(picked):
            _to_array(scaler(frame), self.shape, out[k])
        return out


class FrameScaler:
    """Single frames (a camera's, one at a time) → uint8 [C, H, W]: the same scaling and
    crop as a decoded view's, so live frames and video files look alike to a model."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        if channels not in _SCALED_FORMAT:
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        self.shape = (channels, height, width)
        self._scaled = _Scaler(self.shape, _SCALED_FORMAT[channels])
        self._final = _Scaler(self.shape, _FINAL_FORMAT[channels])

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        _to_array(self._final(self._scaled(frame)), self.shape, out)
        return out


def _to_array(frame: av.VideoFrame, shape: tuple[int, int, int], out: np.ndarray) -> None:
    """Write a frame already in its final format, covering H x W, centre-cropped into out."""
    out[...] = _cropped(frame, *shape)


def _cropped(frame: av.VideoFrame, channels: int, height: int, width: int) -> np.ndarray:
    """The frame's pixels [C, H, W], centre-cropped (a view where it can be)."""
    top, left = (frame.height - height) // 2, (frame.width - width) // 2
    plane = frame.planes[0]  # gray or packed rgb24: one plane, rows padded to line_size
    rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
    pixels = rows[:, : frame.width * channels].reshape(frame.height, frame.width, channels)
    return pixels[top : top + height, left : left + width].transpose(2, 0, 1)


def decode_view(
    source: Source,
    *,
    height: int,
    width: int,
    channels: int = 1,
    limits: DecodeLimits | None = None,
    view: str | None = None,
) -> DecodedView:
    """Decode the first video stream of `source`; `take()` gives uint8 [N, channels, height, width]."""
    if channels not in _SCALED_FORMAT:
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    limits = limits or DecodeLimits()
    with (
        _open_bytes(source, limits, view) as file,
        _open_container(file, limits, view) as container,
    ):
        return _decode_stream(container, (channels, height, width), limits, view)


def _open_container(
    file: BinaryIO, limits: DecodeLimits, view: str | None
) -> av.container.InputContainer:
    """Open with FFmpeg's probing capped at max_pixels, so probing cannot decode a huge frame.

    Some decoders (FFV1) then fail to open and lose the header's frame size; those are
    reopened without the cap (they do not decode while probing) so the size is checked.
    """
    container = _av_open(file, {"max_pixels": str(limits.max_pixels)}, view)
    if _is_still_image(container):
        name = container.format.name
        container.close()
        raise StillImageError(
            f"a still image ({name}), not a video; send an MP4, AVI, MKV or WebM", view=view
        )
    contexts = [s.codec_context for s in container.streams.video if s.codec_context is not None]
    if contexts and not (contexts[0].width and contexts[0].height):
        container.close()
        file.seek(0)
        container = _av_open(file, {}, view)
    return container


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg's image demuxers: image2 (by file name) and the *_pipe ones (by content)."""
    names = container.format.name.split(",")
    return any(n == "image2" or (n.endswith("_pipe") and n != "yuv4mpegpipe") for n in names)


def _av_open(
    file: BinaryIO, options: dict[str, str], view: str | None
) -> av.container.InputContainer:
    try:
        # mode="r": a file object opened for writing too ("w+b", e.g. a spooled upload)
        # would otherwise open an output container.
        return av.open(file, mode="r", options=options, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise UnreadableContainerError(
            f"not a video file FFmpeg can read ({_reason(exc)}); send an MP4, AVI, MKV or WebM",
            view=view,
        ) from exc


@contextmanager
def _open_bytes(source: Source, limits: DecodeLimits, view: str | None) -> Iterator[BinaryIO]:
    """Yield a binary file object over `source` once its size is within the limit.

    Paths are opened here, not by FFmpeg, so a path can never name a URL or protocol.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        _check_bytes(memoryview(source).nbytes, limits, view)
        yield io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        try:
            file = open(source, "rb")  # noqa: SIM115 -- closed by the with below
        except OSError as exc:
            raise UnreadableContainerError(
                f"cannot open {os.fspath(source)!r}: {exc.strerror or exc}", view=view
            ) from exc
        with file:
            _check_bytes(os.fstat(file.fileno()).st_size, limits, view)
            yield file
    elif hasattr(source, "read"):
        if source.seekable():
            size = source.seek(0, io.SEEK_END)
            source.seek(0)
            _check_bytes(size, limits, view)
            yield source
        else:
            data = source.read(limits.max_bytes + 1)
            _check_bytes(len(data), limits, view)
            yield io.BytesIO(data)
    else:
        raise TypeError(f"a view is a path, bytes or a binary file object, not {type(source)}")


def _check_bytes(size: int, limits: DecodeLimits, view: str | None) -> None:
    if size > limits.max_bytes:
        raise ClipTooLargeError(
            f"file is {size / _MIB:.1f} MiB, over the {limits.max_bytes / _MIB:g} MiB limit "
            "per view; send a shorter or more compressed clip",
            view=view,
        )
    if size == 0:
        raise UnreadableContainerError("file is empty (0 bytes)", view=view)


def _video_stream(
    container: av.container.InputContainer, view: str | None
) -> av.video.stream.VideoStream:
    """The first video stream FFmpeg has a decoder for."""
    videos = container.streams.video
    for stream in videos:
        if stream.codec_context is not None:
            return stream
    if videos:
        raise NoVideoStreamError(
            f"the {container.format.name} container's video is in a codec this FFmpeg cannot "
            "decode; re-encode it as H.264",
            view=view,
        )
    kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
    raise NoVideoStreamError(
        f"the {container.format.name} container holds no video stream (found: {kinds})",
        view=view,
    )


def _decode_stream(
    container: av.container.InputContainer,
    shape: tuple[int, int, int],
    limits: DecodeLimits,
    view: str | None,
) -> DecodedView:
    stream = _video_stream(container, view)
    # One decoder thread: callers parallelise across clips (worker pools), and FFmpeg's
    # default thread per core costs more than it saves on small frames (bench/decode.py).
    stream.codec_context.thread_count = DECODER_THREADS
    # The header's size, checked before the first frame is decoded; frames are checked too.
    _check_size(stream.codec_context.width, stream.codec_context.height, limits, view)
    scaler = _Scaler(shape, _SCALED_FORMAT[shape[0]])
    frames: list[av.VideoFrame] = []
    times: list[float] = []
    size = (stream.codec_context.width, stream.codec_context.height)
    truncated = False
    try:
        for frame in container.decode(stream):
            t = frame.time
            if t is None:
                t = _fallback_timestamp(frame, stream, times)
            if len(times) >= limits.max_frames:
                raise ClipTooLongError(
                    f"more than {limits.max_frames} frames (refused at decoded frame "
                    f"{len(times) + 1}); send at most {limits.max_frames} frames",
                    view=view,
                )
            if times and t - times[0] > limits.max_duration_s:
                raise ClipTooLongError(
                    f"frames span more than {limits.max_duration_s:g} s (refused at "
                    f"{t - times[0]:.2f} s, decoded frame {len(times) + 1}); send a shorter clip",
                    view=view,
                )
            if (frame.width, frame.height) != size:  # the stream changed resolution
                size = (frame.width, frame.height)
                _check_size(*size, limits, view)
            times.append(t)
            frames.append(scaler(frame))
    except av.error.FFmpegError as exc:
        if not frames:
            raise CorruptVideoError(
                f"the {stream.codec_context.name} stream yields no frame ({_reason(exc)})",
                view=view,
            ) from exc
        truncated = True
    if not frames:
        raise CorruptVideoError(
            f"the {stream.codec_context.name} stream yields no frame", view=view
        )
    return _collect(frames, times, size, shape, truncated)


def _collect(
    frames: list[av.VideoFrame],
    times: list[float],
    size: tuple[int, int],
    shape: tuple[int, int, int],
    truncated: bool,
) -> DecodedView:
    stamps = np.asarray(times, dtype=np.float64)
    order = np.argsort(stamps, kind="stable")  # decoders emit presentation order; be sure
    stamps = stamps[order]
    first = float(stamps[0])
    stamps -= first
    span = float(stamps[-1])
    # The median interval (robust to VFR gaps); np.median's overhead is most of a view's
    # bookkeeping for short clips, a sort of ~50 values is not.
    gaps = np.sort(np.diff(stamps))
    interval = float(gaps[(len(gaps) - 1) // 2] + gaps[len(gaps) // 2]) / 2 if len(gaps) else 0.0
    return DecodedView(
        small=[frames[i] for i in order],
        shape=shape,
        timestamps=stamps,
        info=ViewInfo(
            fps_seen=(len(stamps) - 1) / span if span > 0 else 0.0,
            frames_decoded=len(stamps),
            offset_s=first,
            duration_s=span + interval,
            width=size[0],
            height=size[1],
            truncated=truncated,
        ),
    )


def _fallback_timestamp(
    frame: av.VideoFrame, stream: av.video.stream.VideoStream, times: list[float]
) -> float:
    """A frame without pts: its dts, else one nominal frame after the previous frame."""
    time_base = frame.time_base or stream.time_base
    if frame.dts is not None and time_base is not None:
        return float(frame.dts * time_base)
    if not times:
        return 0.0
    rate = stream.guessed_rate or stream.average_rate or 25
    return times[-1] + 1.0 / float(rate)


def _check_size(width: int, height: int, limits: DecodeLimits, view: str | None) -> None:
    if width > limits.max_width or height > limits.max_height or width * height > limits.max_pixels:
        raise ClipTooLargeError(
            f"frames are {width}x{height}, over the limit of {limits.max_width}x"
            f"{limits.max_height} ({limits.max_pixels / 1e6:.1f} Mpx); send a smaller resolution",
            view=view,
        )
    # A sliver of a frame would be scaled up along its long side to cover H x W.
    if min(width, height) > 0 and max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ClipTooLargeError(
            f"frames are {width}x{height}, more elongated than {limits.max_aspect_ratio:g}:1; "
            "send the camera's ordinary frame",
            view=view,
        )


class _Scaler:
    """Frame -> frame covering the target H x W (short side fitted, aspect kept)."""

    def __init__(self, shape: tuple[int, int, int], pixel_format: str | None) -> None:
        _, self.height, self.width = shape
        self.pixel_format = pixel_format
        # One reformatter keeps its swscale context from frame to frame.
        self._reformatter = VideoReformatter()
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        key = (frame.width, frame.height)
        width, height = self._sizes.get(key) or self._sizes.setdefault(key, self._size(*key))
        # One thread: frames are small after scaling, and callers parallelise across clips;
        # swscale's default (a thread per core) costs more than it saves here.
        return self._reformatter.reformat(
            frame,
            width=width,
            height=height,
            format=self.pixel_format,
            interpolation=_INTERPOLATION,
            threads=1,
        )

    def _size(self, src_w: int, src_h: int) -> tuple[int, int]:
        scale = max(self.width / src_w, self.height / src_h)
        return max(self.width, round(src_w * scale)), max(self.height, round(src_h * scale))


def _reason(exc: av.error.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc)
