"""`/v1/models/{name}/stream`: a live multi-camera session over a WebSocket (docs/streaming.md).

The handshake is refused with an HTTP answer before anything streams: 401 without a valid
API key (the same keys as every route), 404 for an unknown model, 409 for a model that
is not live, 503 while it is not loaded. Past the handshake, a session that cannot go on
is closed with a WebSocket close code and reason (`stream_protocol`): 1013 when the model
holds `MPLSTM_MAX_SESSIONS` already. Two tasks serve a session: one reads messages (frames
into the session's jitter buffer, steps to the scheduler; it stops reading while the
session is full, which is the backpressure a fast client feels), one writes the
session's messages in order. The session's state row is freed however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from mplstm.core.decode import FrameScaler
from mplstm.core.errors import ClipError
from mplstm.core.frames import decode_image
from mplstm.service.auth import keys_match, presented_key
from mplstm.service.errors import ApiError, error_body
from mplstm.service.pipeline import Services
from mplstm.service.repository import LoadedModel
from mplstm.service.sessions import LiveSession
from mplstm.service.stream_protocol import (
    FORMATS,
    POLICY,
    SERVER_ERROR,
    TOO_BIG,
    TRY_AGAIN_LATER,
    FrameIn,
    StreamClosed,
    bad,
    parse_control,
    parse_frames,
    raw_frame,
)

log = logging.getLogger(__name__)
stream_router = APIRouter()
# Messages waiting for a client that does not read them; past this the session closes.
OUTBOX_LIMIT = 4096


@stream_router.websocket("/v1/models/{name}/stream")
async def stream(
    websocket: WebSocket,
    name: str,
    top_k: Annotated[int, Query(ge=1, le=10_000)] = 5,
    every: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> None:
    """One live session: frames per view in, running and final predictions out."""
    svc: Services = websocket.app.state.services
    model = await _admitted_model(websocket, svc, name)
    if model is None:
        return
    assert model.live is not None
    manifest = model.manifest
    pre = manifest.preprocess
    outbox: asyncio.Queue[dict[str, Any] | StreamClosed] = asyncio.Queue()
    session = LiveSession(
        manifest.view_names,
        manifest.labels,
        float(pre.fps or 0),
        (pre.channels, pre.height, pre.width),
        manifest.allows_missing_views,
        svc.settings.session_limits(every, top_k),
        lambda message: _post(outbox, message),
    )
    await websocket.accept()
    if not model.live.admit(session):
        held = model.live.max_sessions
        reason = f"model {name!r} holds {held} sessions; retry later or on another replica"
        await _close(websocket, svc, name, StreamClosed(TRY_AGAIN_LATER, reason))
        return
    outbox.put_nowait(_ready(model, session, svc))
    closed = await _serve(websocket, svc, model, session, outbox)
    model.live.release(session)
    await _close(websocket, svc, name, closed)


async def _admitted_model(websocket: WebSocket, svc: Services, name: str) -> LoadedModel | None:
    """The live model to stream to, or None after refusing the handshake with HTTP."""
    keys: frozenset[str] = websocket.app.state.api_keys
    given = presented_key(websocket)
    if keys and (given is None or not keys_match(given, keys)):
        detail = "a valid API key is needed: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
        return await _deny(websocket, 401, "unauthorized", detail)
    try:
        model = svc.repository.get(name)
    except ApiError as exc:
        return await _deny(websocket, exc.status, exc.code, exc.detail, exc.headers)
    if model.live is None:
        detail = (
            f"model {name!r} is not a live package (no step model); stream to a live model "
            f"or send whole clips to POST /v1/models/{name}/predict"
        )
        return await _deny(websocket, 409, "not_live", detail)
    return model


async def _deny(
    websocket: WebSocket, status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> None:
    response = JSONResponse(error_body(code, detail), status_code=status, headers=headers)
    await websocket.send_denial_response(response)


def _ready(model: LoadedModel, session: LiveSession, svc: Services) -> dict[str, Any]:
    """The first message: what the session streams to and its limits."""
    pre = model.manifest.preprocess
    settings = svc.settings
    return {
        "type": "ready",
        "session": uuid.uuid4().hex,
        "model": {"name": model.name, "version": model.version},
        "views": list(model.manifest.view_names),
        "allows_missing_views": model.manifest.allows_missing_views,
        "fps": pre.fps,
        "frame": {"channels": pre.channels, "height": pre.height, "width": pre.width},
        "formats": list(FORMATS),
        "update_every": session.limits.update_every,
        "top_k": session.limits.top_k,
        "limits": {
            "max_message_bytes": settings.stream_max_message_bytes,
            "max_frames_per_message": settings.stream_max_frames_per_message,
            "buffer_frames": settings.stream_buffer_frames,
            "silence_s": session.limits.silence_s,
            "max_skew_s": settings.stream_max_skew_s,
            "idle_s": settings.stream_idle_s,
        },
    }


def _post(outbox: asyncio.Queue[dict[str, Any] | StreamClosed], message: Any) -> None:
    if outbox.qsize() >= OUTBOX_LIMIT and not isinstance(message, StreamClosed):
        if outbox.qsize() == OUTBOX_LIMIT:  # once: then the session ends
            outbox.put_nowait(StreamClosed(POLICY, "the client does not read its messages"))
        return
    outbox.put_nowait(message)


async def _serve(
    websocket: WebSocket,
    svc: Services,
    model: LoadedModel,
    session: LiveSession,
    outbox: asyncio.Queue[dict[str, Any] | StreamClosed],
) -> StreamClosed | None:
    """Read and write until the session ends: the close to send, or None (client gone)."""
    seen = [asyncio.get_running_loop().time()]  # when the last message came
    reader = asyncio.create_task(_read(websocket, svc, model, session, seen))
    writer = asyncio.create_task(_write(websocket, outbox))
    watch = asyncio.create_task(_idle_watch(session, svc.settings.stream_idle_s, seen))
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if writer in done:
            return writer.result()
        if reader.result():  # the client went away: nothing left to tell it
            return None
        return await writer  # the reader posted its close after what was queued
    except Exception:
        log.exception("live session on %s failed", model.name)
        return StreamClosed(SERVER_ERROR, "internal error (a bug; see the log)")
    finally:
        for task in (reader, writer, watch):
            task.cancel()
        await asyncio.gather(reader, writer, watch, return_exceptions=True)


async def _idle_watch(session: LiveSession, idle_s: float, seen: list[float]) -> None:
    """Close the session (1008) once no message came for `idle_s`.

    One timer per session rather than one per message: a timeout around every receive
    cost a noticeable part of a step's CPU.
    """
    loop = asyncio.get_running_loop()
    while True:
        wait = idle_s if math.isinf(seen[0]) else seen[0] + idle_s - loop.time()
        await asyncio.sleep(max(0.0, wait))
        if loop.time() - seen[0] >= idle_s:
            session.send_close(StreamClosed(POLICY, f"idle: no message for {idle_s:g} s"))
            return


async def _read(
    websocket: WebSocket, svc: Services, model: LoadedModel, session: LiveSession, seen: list[float]
) -> bool:
    """Messages into the session until the client leaves (True) or a refusal (False)."""
    assert model.live is not None
    loop = asyncio.get_running_loop()
    scaler = FrameScaler(*session.frame_shape)
    try:
        while True:
            message = await websocket.receive()
            seen[0] = loop.time()
            if message["type"] == "websocket.disconnect":
                return True
            _handle(message, session, scaler, svc)
            session.form_steps()
            model.live.notify(session)
            session.check_not_stuck()
            if not session.room.is_set():  # backpressure: read on once steps have run
                seen[0] = math.inf  # held back by the server: not idle
                await session.room.wait()
                seen[0] = loop.time()
    except StreamClosed as closed:
        session.send_close(closed)
        return False


def _handle(
    message: dict[str, Any], session: LiveSession, scaler: FrameScaler, svc: Services
) -> None:
    settings = svc.settings
    data: bytes | None = message.get("bytes")
    text: str | None = message.get("text")
    size = len(data) if data is not None else len((text or "").encode())
    if size > settings.stream_max_message_bytes:
        raise StreamClosed(
            TOO_BIG, f"message of {size} bytes; at most {settings.stream_max_message_bytes}"
        )
    if data is None:
        control = parse_control(text or "")
        if control.type == "start":
            session.start(control.t, control.utterance)
        else:
            session.end(control.t)
        return
    for frame in parse_frames(data, settings.stream_max_frames_per_message):
        if frame.view not in session.views:
            raise bad(f"unknown view {frame.view!r}; this model takes {list(session.view_names)}")
        session.add_frame(frame.view, frame.t, _pixels(frame, session, scaler, svc))


def _pixels(frame: FrameIn, session: LiveSession, scaler: FrameScaler, svc: Services) -> Any:
    if frame.format == "raw":
        return raw_frame(frame.data, session.frame_shape)
    try:
        return decode_image(bytes(frame.data), frame.format, scaler, svc.settings.decode_limits())
    except ClipError as exc:
        raise bad(f"view {frame.view!r} at t = {frame.t:.3f} s: {exc}") from None


async def _write(
    websocket: WebSocket, outbox: asyncio.Queue[dict[str, Any] | StreamClosed]
) -> StreamClosed | None:
    """Send the session's messages in order; the close that ends it (None: client gone)."""
    while True:
        item = await outbox.get()
        if isinstance(item, StreamClosed):
            return item
        try:
            await websocket.send_json(item)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return None


async def _close(
    websocket: WebSocket, svc: Services, name: str, closed: StreamClosed | None
) -> None:
    code = "disconnect" if closed is None else str(closed.code)
    svc.metrics.stream.closed.labels(name, code).inc()
    if closed is None or websocket.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(closed.code, closed.reason)
