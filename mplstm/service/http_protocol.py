"""Uvicorn's httptools protocol with the service's connection limits (`connections.py`).

`mplstm serve` runs uvicorn with `http=PROTOCOL`; any uvicorn launch can name it
(`uvicorn --factory mplstm.service.app:app_from_env --http mplstm.service.http_protocol:ServiceHttpProtocol`).
On top of uvicorn's own protocol it

- counts the bytes of a request head before they reach the parser, and the headers as
  they are parsed: past either limit, 431 and the connection closed, so a huge header
  costs at most the limit (httptools joins a header's pieces, quadratically in their number);
- gives the head a deadline from its first byte (or from the connection): 408;
- gives the body a deadline and a minimum average rate, counted only while the route
  reads it and the server is not holding the client back: 408;
- starts the app on a request only once 64 KiB of its body (or all of it) have come, or
  the client expects `100 Continue`: a client trickling a body costs no app task;
- caps open connections: beyond, 503 at once, before a descriptor is spent on parsing;
- at shutdown, answers a request still uploading with 503 `shutting_down`;
- answers every refusal as JSON in the service's error shape, then reads and drops what
  the client still sends for a moment (a lingering close), so the answer is not lost to
  a connection reset.

A request cut off while its route runs is seen by the route as a client that went away;
the scope carries the `Refusal` (`CUT_OFF`), so the route reports what the client got.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from typing import Any

import httptools
from prometheus_client import CollectorRegistry
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from mplstm.service.connections import (
    CUT_OFF,
    DEADLINE_SPREAD_S,
    GUARD_KEY,
    LINGER_S,
    UPLOAD_CHECK_S,
    UPLOAD_RATE_GRACE_S,
    ConnectionGuard,
    ConnectionLimits,
    HttpMetrics,
    Refusal,
)
from mplstm.service.errors import error_body
from mplstm.service.limits import content_length

# What `mplstm serve` passes to uvicorn as `http=`.
PROTOCOL = "mplstm.service.http_protocol:ServiceHttpProtocol"
SHUTTING_DOWN = Refusal(
    503, "shutting_down", "the server is shutting down; retry (on another replica)"
)


class _TooMuchHead(Exception):
    """Raised from a parser callback to stop parsing a head over the limits."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


class _ClockedFlow(FlowControl):
    """Uvicorn's flow control, also timing the body the client could have been sending.

    Uvicorn's `receive()` resumes reading on every call, so the first call after a head
    is the route asking for the body: the body's clock starts there, and stops while the
    server holds the client back (reading paused: the route is not taking what came).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport)
        self._loop = loop
        self._asked_at: float | None = None
        self._paused_at = 0.0
        self._held_s = 0.0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._paused_at = self._loop.time()
        super().pause_reading()

    def resume_reading(self) -> None:
        now = self._loop.time()
        if self._asked_at is None:
            self._asked_at = now
        elif self.read_paused:
            self._held_s += now - max(self._paused_at, self._asked_at)
        super().resume_reading()

    def new_body(self, asked: bool) -> None:
        """A request head has arrived; its body is asked for (read) already, or not yet."""
        self._asked_at = self._loop.time() if asked else None
        self._held_s = 0.0

    def client_seconds(self) -> float:
        """Seconds the body could have been arriving: asked for, and not held back."""
        if self._asked_at is None:
            return 0.0
        now = self._loop.time()
        held = self._held_s
        if self.read_paused:
            held += now - max(self._paused_at, self._asked_at)
        return max(now - self._asked_at - held, 0.0)


def _spread() -> float:
    """A random delay that keeps deadlines of connections opened together apart."""
    return random.uniform(0.0, DEADLINE_SPREAD_S)


@functools.cache
def _default_guard() -> ConnectionGuard:
    """Limits for an app that put no guard in its lifespan state (default settings)."""
    return ConnectionGuard(ConnectionLimits(), HttpMetrics(CollectorRegistry()))


class ServiceHttpProtocol(HttpToolsProtocol):
    """One client connection, with the service's limits on heads, bodies and connections."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard: ConnectionGuard = app_state.get(GUARD_KEY) or _default_guard()
        self.limits = self.guard.limits
        self.timeout_keep_alive = self.limits.keepalive_timeout_s  # type: ignore[assignment]
        self._in_head = True  # between the end of a message (or connect) and its next head
        self._head_bytes = 0
        self._heads = 0  # heads parsed so far
        self._header_count = 0
        self._timer: asyncio.TimerHandle | None = None  # head deadline, upload check, linger
        self._body_bytes = 0  # of the request whose body is arriving
        self._body_declared = 0  # its Content-Length (0: none, or chunked)
        self._lingering = False
        self._counted = False
        # A request whose app task waits for the first 64 KiB of its body (or all of it).
        self._waiting: tuple[RequestResponseCycle, ASGI3Application] | None = None

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow: _ClockedFlow = _ClockedFlow(transport, self.loop)  # type: ignore[assignment]
        self.guard.metrics.connections.inc()
        self._counted = True
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                Refusal(
                    503,
                    "too_many_connections",
                    f"the server holds {self.limits.max_connections} connections already; "
                    "retry shortly",
                )
            )
            return
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._arm(self.limits.header_timeout_s + _spread(), self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._uncount()
        if self._waiting is not None and not self._lingering:
            self.guard.client_left(self.client)  # mid-upload, before the app saw the request
        self._waiting = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The transport moves to a WebSocket protocol, which keeps its own count.
        self._cancel_timer()
        self._uncount()
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        """At SIGTERM: a body still arriving, or a head begun, gets 503 shutting_down."""
        cycle = self.cycle
        uploading = cycle is not None and cycle.more_body and not cycle.response_started
        idle = cycle is None or cycle.response_complete
        if uploading or (idle and self._in_head and self._head_bytes > 0):
            self._refuse(SHUTTING_DOWN)
            return
        super().shutdown()

    # -- bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # after a refusal: read and dropped
        self._unset_keepalive_if_required()
        if not self._in_head:
            self._feed(data)
            return
        if self._timer is None and (self.cycle is None or self.cycle.response_complete):
            # The next head of a kept-alive connection has begun.
            self._arm_head_deadline()
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._feed(data)
            return
        # Only what a head may hold reaches the parser; past it, a head must have ended.
        view = memoryview(data)
        heads = self._heads
        self._head_bytes += room
        self._feed(view[:room])
        if self._lingering or self.transport.is_closing():
            return
        if self._heads == heads:
            self._refuse(
                Refusal(
                    431,
                    "headers_too_large",
                    f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
                )
            )
            return
        self._feed(view[room:])

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _TooMuchHead):
                self._refuse(cause.refusal)
            else:
                self._refuse(Refusal(400, "bad_request", f"invalid HTTP request: {exc}"))

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _TooMuchHead(
                Refusal(431, "too_many_headers", f"more than {self.limits.max_headers} headers")
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._cancel_timer()
        super().on_headers_complete()
        self._body_bytes = 0
        self._body_declared = content_length(self.headers) or 0
        # Waiting for the body, this protocol reads it for the app: its clock runs.
        self.flow.new_body(asked=self._waiting is not None)
        self._arm(UPLOAD_CHECK_S + _spread(), self._check_upload)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)
        if self._waiting is not None and len(self._waiting[0].body) >= HIGH_WATER_LIMIT:
            self._start_waiting()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._start_waiting()
        self._cancel_timer()
        self._in_head = True
        self._head_bytes = 0

    # -- the app --------------------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Start the app on a request once its body has begun in earnest (nginx's request
        buffering, up to uvicorn's 64 KiB read-ahead): a client trickling a body never
        costs the app a task, its middleware stack and the garbage collector's time."""
        body_to_come = cycle.more_body and len(cycle.body) < HIGH_WATER_LIMIT
        if body_to_come and not cycle.waiting_for_100_continue:
            self._waiting = (cycle, app)
            return
        super()._start_asgi_task(cycle, app)

    def _start_waiting(self) -> None:
        if self._waiting is not None:
            cycle, app = self._waiting
            self._waiting = None
            super()._start_asgi_task(cycle, app)

    # -- deadlines --------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._head_bytes == 0:
            self.transport.close()  # a connection that never asked anything
            return
        self._refuse(
            Refusal(
                408,
                "header_timeout",
                f"the request head did not arrive within {self.limits.header_timeout_s:g} s",
            )
        )

    def _check_upload(self) -> None:
        self._timer = None
        seconds = self.flow.client_seconds()
        limits, received = self.limits, self._body_bytes
        if seconds >= limits.upload_timeout_s:
            self._refuse(
                Refusal(
                    408,
                    "upload_timeout",
                    f"the request body did not arrive within {limits.upload_timeout_s:g} s "
                    f"({received} bytes came)",
                )
            )
            return
        # The minimum rate, or the pace that brings the declared body in before the
        # deadline: a client may not hold the room of a large body while trickling it.
        pace = self._body_declared / limits.upload_timeout_s
        rate = max(limits.min_upload_bytes_per_s, pace)
        if seconds < UPLOAD_RATE_GRACE_S or received >= rate * (seconds - UPLOAD_RATE_GRACE_S):
            self._arm(UPLOAD_CHECK_S, self._check_upload)
            return
        why = (
            f"at that pace its {self._body_declared} bytes would not arrive within "
            f"{limits.upload_timeout_s:g} s"
            if pace > limits.min_upload_bytes_per_s
            else f"under the minimum of {limits.min_upload_bytes_per_s} bytes/s"
        )
        self._refuse(
            Refusal(
                408,
                "upload_too_slow",
                f"the request body arrives at {received / seconds:.0f} bytes/s, {why}",
            )
        )

    # -- refusing ---------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        """Answer `refusal` (unless a response has begun), then linger and close."""
        self.guard.refused(refusal, self.client)
        self._cancel_timer()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        answered = False
        self._waiting = None  # a request the app has not seen: answered here alone
        if cycle is not None and not cycle.response_complete:
            # The route sees a client that went away, and learns why from the scope.
            cycle.scope[CUT_OFF] = refusal  # type: ignore[literal-required]
            answered = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None:
            answered = not self._in_head  # its body still comes after its answer
        if self.transport.is_closing():
            return
        if answered:
            self.transport.close()
            return
        self.transport.write(self._response(refusal))
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self.transport.close)

    def _response(self, refusal: Refusal) -> bytes:
        body = json.dumps(error_body(refusal.code, refusal.detail)).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if refusal.retry_after:
            headers.append((b"retry-after", b"1"))
        lines = [STATUS_LINE[refusal.status], *(b"%s: %s\r\n" % h for h in headers), b"\r\n"]
        return b"".join([*lines, body])

    # -- timers -----------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.guard.metrics.connections.dec()
