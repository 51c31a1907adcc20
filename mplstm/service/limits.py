"""Request body limit, enforced while the body streams in.

A declared Content-Length over the limit is refused before a byte is read; a chunked
body (no Content-Length) or one that lies is cut off at the first chunk that goes over.
Then 413 `body_too_large` is sent and the app sees the client as gone, so no handler
ever holds more than the limit in memory or on disk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mplstm.service.connections import CUT_OFF, Refusal
from mplstm.service.errors import BodyTooLargeError, error_body

log = logging.getLogger(__name__)


class BodyLimitMiddleware:
    """Pure ASGI middleware: at most `max_bytes` of request body per request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(
                send, f"request body of {declared} bytes exceeds the limit of {self.max_bytes}"
            )
            return
        received = 0
        refused = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    detail = f"request body exceeds the limit of {self.max_bytes} bytes"
                    # The route sees a client gone, and reports the 413 it got (bodies.py).
                    scope[CUT_OFF] = Refusal(413, BodyTooLargeError.code, detail)
                    if not response_started:
                        await _send_413(send, detail)
                    # The app stops reading, as it would for a client that went away.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 has been sent; whatever the app answers is dropped
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise


def declared_length(scope: MutableMapping[str, Any]) -> int | None:
    """The request's Content-Length, or None (chunked, or not a number)."""
    return content_length(scope.get("headers", ()))


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length among raw (lower-case) headers, or None."""
    for key, value in headers:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, detail: str) -> None:
    body = json.dumps(error_body(BodyTooLargeError.code, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
