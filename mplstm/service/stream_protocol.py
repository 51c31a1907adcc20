"""The live-session WebSocket protocol (docs/streaming.md): messages in, close codes out.

Client → server:
- text, JSON: `{"type": "start", "t": SECONDS, "utterance": "id"}` opens an utterance at
  capture time t; `{"type": "end", "t": SECONDS}` closes it (a final prediction follows);
- binary: frames. A 4-byte little-endian header length, a JSON header
  `{"frames": [{"view": NAME, "t": SECONDS, "format": "raw"|"jpeg"|"png", "size": BYTES},
  ...]}`, then the frames' bytes in header order. `raw` is uint8 C x H x W at the model's
  size; JPEG/PNG of any size are scaled and cropped as video frames are.

Every refusal closes the session with a code and a reason (RFC 6455 §7.4):
1003 a kind of message the server does not take, 1007 malformed or inconsistent data,
1008 policy (idle, a view the model needs went silent, a client that does not read),
1009 too big, 1011 a server fault, 1013 try again later (sessions full, model not ready).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = struct.Struct("<I")
FORMATS = ("raw", "jpeg", "png")

NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
SERVER_ERROR = 1011
TRY_AGAIN_LATER = 1013
# RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
MAX_REASON_BYTES = 123


class StreamClosed(Exception):
    """End the session with WebSocket close `code` and `reason` (the client is told both)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = short_reason(reason)


def short_reason(reason: str) -> str:
    """`reason` cut to what a close frame carries (123 bytes of UTF-8)."""
    data = reason.encode()
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def bad(reason: str) -> StreamClosed:
    """Malformed or inconsistent data: 1007."""
    return StreamClosed(INVALID_DATA, reason)


@dataclass(frozen=True)
class FrameIn:
    """One frame of a binary message, still encoded."""

    view: str
    t: float
    format: str
    data: memoryview


@dataclass(frozen=True)
class Control:
    """A text message: start or end of an utterance."""

    type: str  # "start" | "end"
    t: float
    utterance: str | None = None


def _time(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"{where}: t must be a finite number of seconds, got {value!r}")
    return float(value)


def parse_control(text: str) -> Control:
    """A text message → Control; StreamClosed (1007/1003) when it is not one."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"text message is not JSON ({exc.msg})") from None
    if not isinstance(message, dict):
        raise bad("text message must be a JSON object")
    kind = message.get("type")
    if kind not in ("start", "end"):
        raise StreamClosed(
            UNSUPPORTED_DATA, f"unknown message type {kind!r}: text messages are start or end"
        )
    utterance = message.get("utterance")
    if utterance is not None and not isinstance(utterance, str | int):
        raise bad("utterance must be a string")
    return Control(
        kind, _time(message.get("t"), kind), None if utterance is None else str(utterance)
    )


def parse_frames(data: bytes, max_frames: int) -> list[FrameIn]:
    """A binary message → its frames (still encoded); StreamClosed when malformed."""
    view = memoryview(data)
    if len(view) < HEADER_LENGTH.size:
        raise bad("binary message shorter than its 4-byte header length")
    (length,) = HEADER_LENGTH.unpack_from(view)
    body_start = HEADER_LENGTH.size + length
    if body_start > len(view):
        raise bad(f"binary message: header length {length} runs past the message end")
    try:
        header = json.loads(bytes(view[HEADER_LENGTH.size : body_start]))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad("binary message: the header is not JSON") from None
    entries = header.get("frames") if isinstance(header, dict) else None
    if not isinstance(entries, list) or not entries:
        raise bad('binary message: the header needs a non-empty "frames" list')
    if len(entries) > max_frames:
        raise StreamClosed(TOO_BIG, f"{len(entries)} frames in one message; at most {max_frames}")
    frames, offset = [], body_start
    for i, entry in enumerate(entries):
        frame, offset = _frame_entry(entry, i, view, offset)
        frames.append(frame)
    if offset != len(view):
        raise bad(f"binary message: {len(view) - offset} bytes after the last frame")
    return frames


def _frame_entry(entry: Any, i: int, data: memoryview, offset: int) -> tuple[FrameIn, int]:
    if not isinstance(entry, dict):
        raise bad(f"frame {i}: each header entry is an object")
    fmt = entry.get("format", "raw")
    if fmt not in FORMATS:
        raise StreamClosed(UNSUPPORTED_DATA, f"frame {i}: format {fmt!r}; use one of {FORMATS}")
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise bad(f"frame {i}: size must be a positive byte count")
    if offset + size > len(data):
        raise bad(f"frame {i}: {size} bytes declared, the message ends before")
    view = entry.get("view")
    if not isinstance(view, str):
        raise bad(f"frame {i}: view must be a view name")
    frame = FrameIn(view, _time(entry.get("t"), f"frame {i}"), fmt, data[offset : offset + size])
    return frame, offset + size


def encode_frames(frames: list[tuple[str, float, str, bytes]]) -> bytes:
    """A binary frames message from (view, t, format, data) tuples: what a client sends."""
    header = {
        "frames": [
            {"view": v, "t": t, "format": fmt, "size": len(data)} for v, t, fmt, data in frames
        ]
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([HEADER_LENGTH.pack(len(head)), head, *(f[3] for f in frames)])


def raw_frame(data: memoryview, shape: tuple[int, int, int]) -> np.ndarray:
    """A raw frame's bytes → uint8 [C, H, W]; 1007 when the size is not C x H x W."""
    expected = shape[0] * shape[1] * shape[2]
    if len(data) != expected:
        channels, height, width = shape
        raise bad(
            f"raw frame of {len(data)} bytes; this model takes {channels}x{height}x{width} "
            f"uint8 = {expected} bytes (or send jpeg/png)"
        )
    return np.frombuffer(data, np.uint8).reshape(shape)
