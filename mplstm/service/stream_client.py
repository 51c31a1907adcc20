"""The live-session client behind `mplstm stream` (docs/streaming.md).

Each view's SOURCE is anything PyAV opens: a video file, a V4L2 device (/dev/video0), an
RTSP/HTTP/UDP URL. Frames are decoded and scaled with `core`'s code and sent with their
presentation timestamps, each view's clock starting at its own first frame (core's sync
rule), interleaved in time, frames within `group_s` of each other in one message. Files
are decoded whole first (`core.decode.decode_view`) and sent as fast as the server takes
them, or at their own pace with `realtime`; live sources are sent as they arrive. With
files for every view and no utterance given, one utterance covers the clip: from 0 to the
views' common duration (`core.sync.common_duration`), as `load_clip` would sample it.
Every server message is handed to `on_message` (the CLI prints it as one JSON line).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np

from mplstm.core.decode import FrameScaler, decode_view
from mplstm.core.frames import iter_frames
from mplstm.core.limits import DecodeLimits
from mplstm.core.sync import common_duration
from mplstm.service.stream_protocol import NORMAL, encode_frames

Frame = tuple[float, str, np.ndarray]  # (t, view, pixels [C, H, W])


class StreamClientError(RuntimeError):
    """The session could not run or ended with an error; the message says why."""


@dataclass(frozen=True)
class StreamOptions:
    """What `mplstm stream` was asked for."""

    url: str  # the service's base URL (http(s)://host:port) or the ws(s):// stream URL
    model: str
    views: dict[str, str]  # view name -> source
    realtime: bool = False
    utterances: tuple[tuple[float, float], ...] = ()
    api_key: str | None = None
    top_k: int = 5
    every: int | None = None
    group_s: float = 0.01
    image_format: str = "raw"  # or "jpeg"/"png": smaller messages, decoded by the server
    sync_tolerance_s: float = 0.2
    limits: DecodeLimits = field(default_factory=DecodeLimits)


def stream_url(base: str, model: str, top_k: int, every: int | None) -> str:
    """ws(s)://host:port/v1/models/MODEL/stream?... from an http(s) or ws(s) base URL."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/stream"):
        path = f"{path}/v1/models/{model}/stream"
    query = {"top_k": top_k, **({"every": every} if every else {})}
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def is_file(source: str) -> bool:
    """A regular file (sent whole, at its own pace or faster); else a live source."""
    return os.path.isfile(source)


def file_frames(
    options: StreamOptions, shape: tuple[int, int, int]
) -> tuple[list[Frame], float, float]:
    """Every frame of file views in time order, the views' common duration, and the widest
    gap between two frames of a view (how long after an end its frames may still count)."""
    channels, height, width = shape
    frames: list[Frame] = []
    durations = {}
    gap = 0.0
    for name, source in options.views.items():
        view = decode_view(
            source, height=height, width=width, channels=channels, limits=options.limits, view=name
        )
        durations[name] = view.info.duration_s
        if len(view.timestamps) > 1:
            gap = max(gap, float(np.diff(view.timestamps).max()))
        frames.extend(
            (float(t), name, pixels) for t, pixels in zip(view.timestamps, view.take(), strict=True)
        )
    frames.sort(key=lambda f: (f[0], list(options.views).index(f[1])))
    return frames, common_duration(durations, options.sync_tolerance_s), gap


def live_frames(
    options: StreamOptions, shape: tuple[int, int, int], stop: threading.Event
) -> Iterator[Frame]:
    """Frames of live sources as they arrive (one decoding thread per view).

    With `realtime`, each view's frames are released at their own timestamps, as a
    camera would deliver them (a URL to a recording, say), so views arrive interleaved.
    """
    import queue

    arrived: queue.Queue[Frame | None] = queue.Queue(maxsize=256)

    clock = [time.perf_counter()]  # set again once every source has delivered a frame

    def start_clock() -> None:
        clock[0] = time.perf_counter()

    opened = threading.Barrier(len(options.views), action=start_clock)

    def decode(name: str, source: str) -> None:
        frames = iter_frames(source, FrameScaler(*shape))
        try:
            first = next(frames, None)  # the source is open and delivering
            with contextlib.suppress(threading.BrokenBarrierError):
                opened.wait()  # every camera starts together, as a rig's would
            for frame in itertools.chain([first] if first else [], frames):
                if stop.is_set():
                    break
                if options.realtime:
                    time.sleep(max(0.0, clock[0] + frame.t - time.perf_counter()))
                arrived.put((frame.t, name, frame.pixels))
        except BaseException:
            opened.abort()  # the other views go on without this one
            raise
        finally:
            arrived.put(None)

    threads = [
        threading.Thread(target=decode, args=item, daemon=True) for item in options.views.items()
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    while running:
        item = arrived.get()
        if item is None:
            running -= 1
            continue
        yield item


def group(frames: list[Frame], group_s: float) -> Iterator[list[Frame]]:
    """Consecutive frames within `group_s` of the first of their group: one message each."""
    batch: list[Frame] = []
    for frame in frames:
        if batch and frame[0] - batch[0][0] > group_s:
            yield batch
            batch = []
        batch.append(frame)
    if batch:
        yield batch


def encode(batch: list[Frame], image_format: str) -> bytes:
    """A binary frames message (raw pixels, or each frame re-encoded as JPEG/PNG)."""
    if image_format == "raw":
        return encode_frames([(v, t, "raw", pixels.tobytes()) for t, v, pixels in batch])
    from mplstm.core.frames import encode_image

    return encode_frames(
        [(v, t, image_format, encode_image(pixels, image_format)) for t, v, pixels in batch]
    )


async def run_stream(options: StreamOptions, on_message: Callable[[dict[str, Any]], None]) -> int:
    """Stream the views; returns 0 when every utterance got its final answer."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    headers = {"X-API-Key": options.api_key} if options.api_key else {}
    url = stream_url(options.url, options.model, options.top_k, options.every)
    try:
        # No per-message deflate: raw pixels barely compress and zlib costs the server more
        # CPU per frame than the rest of a step (--format jpeg saves bandwidth instead).
        async with connect(url, additional_headers=headers, max_size=2**24, compression=None) as ws:
            ready = json.loads(await ws.recv())
            on_message(ready)
            if ready.get("type") != "ready":
                raise StreamClientError(f"unexpected first message {ready!r}")
            frame = ready["frame"]
            shape = (frame["channels"], frame["height"], frame["width"])
            finals = await _session(ws, options, shape, on_message)
            return 0 if finals else 1
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace") if exc.response.body else ""
        raise StreamClientError(
            f"the server refused the session: HTTP {exc.response.status_code} {body}"
        ) from None
    except ConnectionClosed as exc:
        raise StreamClientError(f"the connection closed: {exc}") from None


async def _session(
    ws: Any,
    options: StreamOptions,
    shape: tuple[int, int, int],
    on_message: Callable[[dict[str, Any]], None],
) -> bool:
    files = all(is_file(s) for s in options.views.values())
    expected = len(options.utterances) or 1  # no --utterance: one, over the whole stream
    finals = 0
    closed: dict[str, Any] = {}

    async def receive() -> None:
        nonlocal finals
        async for text in ws:
            message = json.loads(text)
            on_message(message)
            finals += message.get("type") == "final"
            if expected and finals >= expected:
                return
        if ws.close_code not in (None, NORMAL):
            closed.update({"type": "closed", "code": ws.close_code, "reason": ws.close_reason})

    reader = asyncio.create_task(receive())
    try:
        await _send(ws, options, shape, files)
        await reader
    finally:
        reader.cancel()
    if closed:
        on_message(closed)
        return False
    await ws.close(NORMAL)
    return finals >= expected


async def _send(ws: Any, options: StreamOptions, shape: tuple[int, int, int], files: bool) -> None:
    if files:
        frames, duration, gap = await asyncio.to_thread(file_frames, options, shape)
        utterances = list(options.utterances) or [(0.0, duration)]
        await _send_timeline(ws, options, frames, utterances, gap)
        return
    stop = threading.Event()
    started = False
    last = 0.0
    try:
        loop = asyncio.get_running_loop()
        source = live_frames(options, shape, stop)
        while (item := await loop.run_in_executor(None, next, source, None)) is not None:
            if not started:
                await ws.send(json.dumps({"type": "start", "t": 0.0}))
                started = True
            last = item[0]
            await ws.send(encode([item], options.image_format))
    finally:
        stop.set()
        if started:
            await ws.send(json.dumps({"type": "end", "t": last + 1e-3}))


async def _send_timeline(
    ws: Any,
    options: StreamOptions,
    frames: list[Frame],
    utterances: list[tuple[float, float]],
    lag: float,
) -> None:
    """Frames and utterance marks in time order; paced by the frames' times with `realtime`.

    An end goes out `lag` after its time: a frame just past the end may still be the one
    nearest the utterance's last step (as it is offline), so it must arrive first.
    """
    # ... but before the next utterance starts ("end" sorts before "start" at one time).
    starts = [s for s, _ in utterances[1:]] + [float("inf")]
    sent_at = [min(e + lag, after) for (_, e), after in zip(utterances, starts, strict=True)]
    marks = sorted([(s, "start") for s, _ in utterances] + [(t, "end") for t in sent_at])
    ends = {t: e for t, (_, e) in zip(sent_at, utterances, strict=True)}
    began = time.perf_counter()
    queue = list(marks)
    heapq.heapify(queue)
    for batch in group(frames, options.group_s):
        while queue and queue[0][0] <= batch[0][0]:
            t, kind = heapq.heappop(queue)
            await ws.send(json.dumps({"type": kind, "t": ends.get(t, t) if kind == "end" else t}))
        if options.realtime:
            await asyncio.sleep(max(0.0, batch[-1][0] - (time.perf_counter() - began)))
        await ws.send(encode(batch, options.image_format))
    while queue:
        t, kind = heapq.heappop(queue)
        await ws.send(json.dumps({"type": kind, "t": ends.get(t, t) if kind == "end" else t}))
