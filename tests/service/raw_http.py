"""Raw-socket HTTP/1.1 for tests of slow, broken and hostile clients (no client library between).

A `RawClient` writes exactly the bytes a test gives it, as slowly as the test likes, and
reads the server's answer (or notices that the server closed the connection) with a
timeout, so no test waits for ever.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

ANSWER_TIMEOUT_S = 30.0


@dataclass
class RawResponse:
    """A parsed HTTP/1.1 answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawClient:
    """One TCP connection to the server on loopback."""

    port: int
    sock: socket.socket = field(init=False)
    _buffer: bytes = b""
    _eof: bool = False  # the server closed (or reset) the connection

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT_S)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def trickle(self, data: bytes, every_s: float) -> RawResponse:
        """Send `data` a byte every `every_s` until the server answers; its answer."""
        for i in range(len(data)):
            try:
                self.sock.send(data[i : i + 1])
            except OSError:
                break
            if self.readable(every_s):
                break
        return self.response()

    def readable(self, wait_s: float) -> bool:
        """Whether the server has sent something, or closed, within `wait_s`."""
        if self._buffer or self._eof:
            return True
        self.sock.settimeout(wait_s)
        try:
            self._recv()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(ANSWER_TIMEOUT_S)
        return True

    def response(self) -> RawResponse:
        """The next answer on the connection."""
        head = self._read_until(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self._read_exactly(int(headers.get("content-length", "0")))
        return RawResponse(status, headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection without a byte more (within the timeout)."""
        while not self._eof and not self._buffer:
            self._recv()
        return self._eof and not self._buffer

    def _recv(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self._buffer += data
        self._eof = not data

    def _fill(self) -> None:
        if self._eof:
            raise ConnectionError(f"the server closed the connection; got {self._buffer!r}")
        self._recv()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def request_head(
    method: str, path: str, headers: dict[str, str] | None = None, *, length: int | None = None
) -> bytes:
    """The head of an HTTP/1.1 request (with Content-Length when `length` is given)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$"
    for match in re.finditer(pattern, text, re.M):
        got = ",".join(sorted((match.group(1) or "").split(","))) if match.group(1) else ""
        if got == want:
            return float(match.group(2))
    return 0.0


def wait_for_metric(url: str, name: str, value: float) -> None:
    """Wait (30 s at most) until the server at `url` reports `value` for metric `name`."""
    deadline = time.monotonic() + 30
    while (now := metric(httpx.get(f"{url}/metrics").text, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {now}, never {value}"
        time.sleep(0.05)


def binary_infer_body(size: int) -> tuple[bytes, dict[str, str]]:
    """A binary /v2 body of `size` bytes whose tensor fits no model (400 once read whole)."""
    count = size - 256
    tensor = {
        "name": "clip",
        "shape": [count],
        "datatype": "UINT8",
        "parameters": {"binary_data_size": count},
    }
    head = json.dumps({"inputs": [tensor]}).encode().ljust(256)
    return head + bytes(count), {"Inference-Header-Content-Length": "256"}


def stalled_upload(url: str, port: int, path: str, size: int) -> tuple[RawClient, bytes]:
    """A binary /v2 upload of `size` bytes, stalled once its route holds its room in the body
    budget (past the first 64 KiB); returns the client and the bytes not sent yet."""
    body, headers = binary_infer_body(size)
    client = RawClient(port)
    sent = 100 * 1024
    client.send(request_head("POST", path, headers, length=len(body)) + body[:sent])
    wait_for_metric(url, "mplstm_http_body_bytes_in_flight", len(body))
    return client, body[sent:]
