"""Request bodies in bounded memory: a server-wide budget, and /v2 bodies read into one buffer.

Every request that holds its body in memory (the /v2 tensors; a /v1 upload, read whole
when a decode worker takes it) holds its size from a budget of
`MPLSTM_MAX_INFLIGHT_BYTES` until it is answered. The first 64 KiB of a body come
without it (uvicorn buffers as much per connection anyway), so a client that declares a
large body and then trickles it holds nothing; past them, the request holds its declared
size (a chunked body: what has come). When the budget is spent, the next request waits
for room, first come first served, up to the request deadline, and then gets 503
`server_busy`: memory stays bounded however many clients upload at once, and an
admitted body is never starved of the room to finish.

A /v2 body is read into one buffer of its declared size, taken once the budget holds
it (a binary body of 16 MiB or more: an anonymous mapping, given back to the kernel
when freed), and its binary tensors are read in place (`oip.parse_infer_request`
takes a buffer): one copy of the body, not the three of reading chunks, joining them and
slicing off the tensor part.

A client that goes away while the body arrives is not a server error: the route raises
`ClientDisconnectedError`, answered (to nobody) without a traceback and counted in
`mplstm_http_client_disconnects_total`.
"""

from __future__ import annotations

import asyncio
import mmap
from collections import deque
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import Message

from mplstm.service.connections import CUT_OFF, HttpMetrics, Refusal
from mplstm.service.errors import BodyTooLargeError, ClientDisconnectedError, ServerBusyError
from mplstm.service.limits import declared_length
from mplstm.service.oip import HEADER_LENGTH

# The first bytes of every body come without the budget: uvicorn buffers this much per
# connection anyway, and a client that stalls before it holds no room.
FREE_BYTES = 64 * 1024
# A binary body at least this large gets its own anonymous mapping: given back to the
# kernel when freed, where the allocator could keep a large heap block in the RSS.
_MAPPED_FROM = 16 * 2**20
_JSON_HINT = (
    " (MPLSTM_MAX_JSON_BYTES, for JSON): send larger tensors as binary tensors "
    "(tritonclient: binary_data=True)"
)


class BodyBudget:
    """Bytes of request bodies in memory, server-wide; FIFO waiting for room, with a deadline."""

    def __init__(self, capacity: int, metrics: HttpMetrics) -> None:
        self.capacity = capacity
        self.metrics = metrics
        self._used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def used(self) -> int:
        """Bytes held now."""
        return self._used

    @asynccontextmanager
    async def hold(self, declared: int | None, *, timeout_s: float) -> AsyncIterator[Hold]:
        """The budget of one body of `declared` bytes (None: chunked) until the block ends.

        413 at once for a declared body that could never fit; waiting for room happens as
        the body arrives (`Hold.arrived`), with `timeout_s` to get it.
        """
        if declared is not None and declared > self.capacity:
            raise self._never_fits(declared)
        hold = Hold(self, declared, asyncio.get_running_loop().time() + timeout_s)
        try:
            yield hold
        finally:
            self._release(hold.size)

    def _never_fits(self, nbytes: int) -> BodyTooLargeError:
        return BodyTooLargeError(
            f"a request body of {nbytes} bytes can never fit MPLSTM_MAX_INFLIGHT_BYTES "
            f"({self.capacity})"
        )

    async def _acquire(self, nbytes: int, deadline: float) -> None:
        if nbytes > self.capacity:
            raise self._never_fits(nbytes)
        if not self._waiters and self._used + nbytes <= self.capacity:
            self._take(nbytes)
            return
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        self._waiters.append((nbytes, granted))
        self.metrics.body_waiting.inc()
        try:
            await asyncio.wait_for(asyncio.shield(granted), max(deadline - loop.time(), 0.0))
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._release(nbytes)  # granted as the wait ended: give it back
            else:
                granted.cancel()
                self._wake()  # whoever queued behind it may fit now
            if isinstance(exc, TimeoutError):
                raise ServerBusyError(
                    f"the server holds {self._used} bytes of request bodies (the limit, "
                    "MPLSTM_MAX_INFLIGHT_BYTES, is "
                    f"{self.capacity}); no room for {nbytes} more in time, retry shortly"
                ) from None
            raise
        finally:
            self.metrics.body_waiting.dec()

    def _take(self, nbytes: int) -> None:
        self._used += nbytes
        self.metrics.body_bytes.set(self._used)

    def _release(self, nbytes: int) -> None:
        if nbytes:
            self._take(-nbytes)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, granted = self._waiters[0]
            if granted.done():
                self._waiters.popleft()
                continue
            if self._used + nbytes > self.capacity:
                return  # first come, first served: a large body is not overtaken for ever
            self._waiters.popleft()
            self._take(nbytes)
            granted.set_result(None)


class Hold:
    """The part of a `BodyBudget` one request's body holds."""

    def __init__(self, budget: BodyBudget, declared: int | None, deadline: float) -> None:
        self._budget = budget
        self._declared = declared
        self._deadline = deadline
        self.size = 0

    async def arrived(self, received: int) -> None:
        """`received` bytes of the body have come: past FREE_BYTES, hold its whole size.

        Waits (until the request's deadline) for room; the declared size at once, so an
        admitted body is never stuck half-way for want of room; a chunked one, what came.
        """
        if received <= FREE_BYTES:
            return
        want = max(received, self._declared or 0)
        if want > self.size:
            await self._budget._acquire(want - self.size, self._deadline)
            self.size = want


class _BodyBuffer:
    """A body's bytes as they come: a growing bytearray until the budget holds the body's
    declared size, then one buffer of that size (for a large binary body an anonymous
    mapping, the kernel's again when freed; below, the heap's pages, already touched,
    cost less than fresh ones)."""

    def __init__(self, declared: int | None, binary: bool) -> None:
        self._declared = declared
        self._mapped = binary and declared is not None and declared >= _MAPPED_FROM
        self.data: bytearray | mmap.mmap = bytearray()
        self.filled = 0
        self._sized = False

    def add(self, chunk: bytes, held: bool) -> None:
        end = self.filled + len(chunk)
        if held and not self._sized and self._declared is not None:
            sized = mmap.mmap(-1, self._declared) if self._mapped else bytearray(self._declared)
            sized[: self.filled] = self.data
            self.data, self._sized = sized, True
        if self._sized:
            self.data[self.filled : end] = chunk
        else:
            self.data += chunk  # type: ignore[operator]
        self.filled = end


@dataclass(frozen=True)
class BodyLimits:
    """The /v2 body limits: the whole body, and its JSON (all of it, or the binary's header)."""

    max_bytes: int
    max_json_bytes: int


def disconnected(scope: MutableMapping[str, Any]) -> ClientDisconnectedError:
    """The error for a body that stopped arriving: the client left, or the server cut it off."""
    refusal: Refusal | None = scope.get(CUT_OFF)
    if refusal is None:
        return ClientDisconnectedError("the client went away before the answer")
    error = ClientDisconnectedError(refusal.detail)
    error.code, error.status = refusal.code, refusal.status
    return error


@asynccontextmanager
async def budgeted(
    request: Request, budget: BodyBudget, *, timeout_s: float
) -> AsyncIterator[Request]:
    """`request` with its body held against `budget` as it arrives, until the block ends (/v1)."""
    async with budget.hold(declared_length(request.scope), timeout_s=timeout_s) as hold:
        received = 0

        async def receive() -> Message:
            nonlocal received
            message = await request.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                await hold.arrived(received)
            return message

        yield Request(request.scope, receive)


@asynccontextmanager
async def infer_body(
    request: Request, budget: BodyBudget, limits: BodyLimits, *, timeout_s: float
) -> AsyncIterator[bytearray | mmap.mmap]:
    """A /v2 body, whole, in one buffer held against `budget` until the block ends."""
    declared = declared_length(request.scope)
    header_length = request.headers.get(HEADER_LENGTH)
    limit = _body_limit(declared, header_length, limits)
    async with budget.hold(declared, timeout_s=timeout_s) as hold:
        # JSON must be a bytearray for the parser; binary tensors may be read from a mapping.
        body = _BodyBuffer(declared, binary=header_length is not None)
        try:
            async for chunk in request.stream():
                end = body.filled + len(chunk)
                if end > limit:
                    raise _too_large("the request body", limit, header_length is None)
                await hold.arrived(end)
                body.add(chunk, held=hold.size > 0)
        except ClientDisconnect:
            raise disconnected(request.scope) from None
        yield body.data


def _body_limit(declared: int | None, header_length: str | None, limits: BodyLimits) -> int:
    """The limit of the whole body; 413 already where the headers show it, or its JSON, over."""
    json_only = header_length is None
    if (
        header_length is not None
        and header_length.isdigit()
        and (int(header_length) > limits.max_json_bytes)
    ):
        raise BodyTooLargeError(
            f"a JSON header of {header_length} bytes exceeds {limits.max_json_bytes}{_JSON_HINT}"
        )
    limit = min(limits.max_json_bytes, limits.max_bytes) if json_only else limits.max_bytes
    if declared is not None and declared > limit:
        raise _too_large(f"a request body of {declared} bytes", limit, json_only)
    return limit


def _too_large(what: str, limit: int, json_only: bool) -> BodyTooLargeError:
    hint = _JSON_HINT if json_only else ""
    return BodyTooLargeError(f"{what} exceeds the limit of {limit} bytes{hint}")


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """Exception handler: a client gone (or cut off) mid-request; no traceback, one count.

    The answer goes nowhere; its status (499, or what the server answered in the route's
    place) is what the access log line shows.
    """
    error = disconnected(request.scope) if isinstance(exc, ClientDisconnect) else exc
    assert isinstance(error, ClientDisconnectedError)
    if error.code == ClientDisconnectedError.code:
        request.app.state.services.http_metrics.client_disconnects.inc()
    return Response(status_code=error.status)
