"""Slow and hostile clients over raw sockets: header limits, deadlines, the connection cap.

The limits live in the HTTP protocol (mplstm/service/http_protocol.py, settings from
mplstm/service/connections.py); each test talks to a real `mplstm serve` on loopback,
with deadlines of a second or two so that a slow client is cut off quickly.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from live_server import Server
from raw_http import RawClient, RawResponse, metric, request_head
from service_helpers import DROPOUT_MODEL, VIEWS, mplstm_serve

HEADER_BYTES, HEADERS = 4096, 20
HEAD_TIMEOUT_S, UPLOAD_TIMEOUT_S, KEEPALIVE_S = 4, 7, 1
GUARDED_ENV = {
    "MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL,
    "MPLSTM_MAX_HEADER_BYTES": str(HEADER_BYTES),
    "MPLSTM_MAX_HEADERS": str(HEADERS),
    "MPLSTM_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
    "MPLSTM_UPLOAD_TIMEOUT_S": str(UPLOAD_TIMEOUT_S),
    "MPLSTM_MIN_UPLOAD_BYTES_PER_S": "1024",
    "MPLSTM_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S),
    "MPLSTM_DECODE_WORKERS": "1",
}
SLOW_CLIENTS = 200


@pytest.fixture(scope="module")
def guarded(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mplstm serve` with small header limits and short deadlines."""
    with mplstm_serve(repo, tmp_path_factory.mktemp("guarded"), GUARDED_ENV) as server:
        yield server


def _refused(client: RawClient, status: int, code: str) -> None:
    """The answer is `status` with `code` in the error shape, and the server closes."""
    answer = client.response()
    assert (answer.status, answer.json()["error"]) == (status, code), answer
    assert answer.headers["connection"] == "close"
    assert answer.json()["detail"]
    assert client.closed_by_server()


def _tensor_body(batch: int = 1) -> tuple[bytes, dict[str, str]]:
    """A valid binary /v2 request for the tiny model (16 frames), as tritonclient encodes it."""
    clip = np.zeros((batch, len(VIEWS), 16, 1, 32, 32), np.uint8)
    tensor = triton.InferInput("clip", list(clip.shape), "UINT8")
    tensor.set_data_from_numpy(clip, binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor])
    return body, {"Inference-Header-Content-Length": str(header_length)}


def test_a_head_over_the_byte_limit_is_431_json_and_the_connection_closes(
    guarded: Server,
) -> None:
    with RawClient(guarded.port) as client:
        head = request_head("GET", "/v2/health/live", {"X-Big": "a" * HEADER_BYTES})
        client.send(head + b"x" * 200_000)  # what a client would go on sending
        _refused(client, 431, "headers_too_large")
    with RawClient(guarded.port) as client:  # a URL counts too
        client.send(request_head("GET", "/v2/health/live?" + "q" * HEADER_BYTES))
        _refused(client, 431, "headers_too_large")
    assert guarded.healthy()


def test_more_headers_than_the_limit_is_431(guarded: Server) -> None:
    with RawClient(guarded.port) as client:
        many = {f"X-{i}": "a" for i in range(HEADERS + 1)}
        client.send(request_head("GET", "/v2/health/live", many))
        _refused(client, 431, "too_many_headers")
    with RawClient(guarded.port) as client:  # under the limit: served
        client.send(request_head("GET", "/v2/health/live", {f"X-{i}": "a" for i in range(10)}))
        assert client.response().status == 200


def test_a_head_near_the_limit_with_a_large_body_in_the_same_write_is_served(
    guarded: Server,
) -> None:
    # The limit is on the head, not on what one read brings: the body after a head that
    # fits goes on to the route, however much of it arrives with the head.
    body, headers = _tensor_body(batch=4)  # 196 KiB of clips
    assert len(body) > 10 * HEADER_BYTES
    path = f"/v2/models/{DROPOUT_MODEL}/infer"
    bare = request_head("POST", path, headers, length=len(body))
    padding = {"X-Pad": "p" * (HEADER_BYTES - len(bare) - 64)}
    head = request_head("POST", path, {**headers, **padding}, length=len(body))
    assert HEADER_BYTES - 64 < len(head) <= HEADER_BYTES
    with RawClient(guarded.port) as client:
        client.send(head + body)
        answer = client.response()
        assert answer.status == 200, answer.body
        # Kept alive: a second request on the same connection.
        client.send(request_head("GET", "/v2/health/live"))
        assert client.response().status == 200


def test_a_head_that_trickles_in_is_cut_off_at_the_header_deadline(guarded: Server) -> None:
    with RawClient(guarded.port) as client:
        answer = client.trickle(request_head("GET", "/v2/health/live"), every_s=0.5)
        assert (answer.status, answer.json()["error"]) == (408, "header_timeout")
        assert client.closed_by_server()
    with RawClient(guarded.port) as client:  # a connection that never says a word
        assert client.closed_by_server()


def test_a_body_slower_than_the_minimum_rate_is_408_upload_too_slow(guarded: Server) -> None:
    body, headers = _tensor_body()
    with RawClient(guarded.port) as client:
        path = f"/v2/models/{DROPOUT_MODEL}/infer"
        client.send(request_head("POST", path, headers, length=len(body)))
        answer = client.trickle(body, every_s=0.5)
        assert (answer.status, answer.json()["error"]) == (408, "upload_too_slow")
        assert "bytes/s" in answer.json()["detail"]
        assert client.closed_by_server()


def _send_at(client: RawClient, body: bytes, chunk: int) -> RawResponse:
    """Send `body` in `chunk`s every half second until the server answers; its answer."""
    for start in range(0, len(body), chunk):
        client.send(body[start : start + chunk])
        if client.readable(0.5):
            break
    return client.response()


def test_a_body_that_does_not_finish_in_time_is_408_upload_timeout(guarded: Server) -> None:
    body, headers = _tensor_body(batch=4)  # 196 KiB
    with RawClient(guarded.port) as client:
        path = f"/v2/models/{DROPOUT_MODEL}/infer"
        client.send(request_head("POST", path, headers, length=len(body)))
        # 16 KiB/s: on a pace to finish in about 12 s, past the 7 s deadline.
        answer = _send_at(client, body, 8192)
        assert (answer.status, answer.json()["error"]) == (408, "upload_timeout")
        assert client.closed_by_server()


def test_a_large_body_trickled_cannot_hold_its_room_until_the_deadline(guarded: Server) -> None:
    body, headers = _tensor_body(batch=4)
    with RawClient(guarded.port) as client:
        path = f"/v2/models/{DROPOUT_MODEL}/infer"
        client.send(request_head("POST", path, headers, length=len(body)))
        # 4 KiB/s: above the minimum rate, far below the pace its size needs.
        answer = _send_at(client, body, 2048)
        assert (answer.status, answer.json()["error"]) == (408, "upload_too_slow")
        assert "would not arrive within 7 s" in answer.json()["detail"]


def test_an_idle_keep_alive_connection_is_closed(guarded: Server) -> None:
    with RawClient(guarded.port) as client:
        client.send(request_head("GET", "/v2/health/live"))
        assert client.response().status == 200
        assert client.closed_by_server()


def test_many_slow_clients_are_cut_off_while_a_normal_client_is_served(
    guarded: Server,
) -> None:
    before = httpx.get(f"{guarded.url}/metrics").text
    body, headers = _tensor_body()
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(RawClient(guarded.port)) for _ in range(SLOW_CLIENTS)]
        for i, client in enumerate(slow):
            client.send(b"GET /v2/health/live HTTP/1.1\r\nX-Slow-%d: " % i)
        with httpx.Client(base_url=guarded.url, timeout=30) as normal:
            for _ in range(5):
                path = f"/v2/models/{DROPOUT_MODEL}/infer"
                assert normal.post(path, content=body, headers=headers).status_code == 200
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda c: c.response(), slow))
    assert {(a.status, a.json()["error"]) for a in answers} == {(408, "header_timeout")}
    after = httpx.get(f"{guarded.url}/metrics").text
    name = "mplstm_http_refused_total"
    cut = metric(after, name, reason="header_timeout") - metric(
        before, name, reason="header_timeout"
    )
    assert cut == SLOW_CLIENTS
    # A few lines for the whole flood, not one per client, and no traceback.
    log = guarded.log()
    assert log.count("408 header_timeout") < SLOW_CLIENTS // 10
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def capped(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that holds at most 24 connections."""
    env = {"MPLSTM_MAX_CONNECTIONS": "24", "MPLSTM_HEADER_TIMEOUT_S": "30"}
    with mplstm_serve(repo, tmp_path_factory.mktemp("capped"), env) as server:
        yield server


def test_connections_over_the_cap_get_503_at_once_and_held_ones_keep_working(
    capped: Server,
) -> None:
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(RawClient(capped.port)) for _ in range(24)]
        for client in held:
            client.send(b"GET /v2/health/live HTTP/1.1\r\n")  # half a head: held open
        for _ in range(3):
            with RawClient(capped.port) as extra:
                extra.send(request_head("GET", "/v2/health/live"))
                answer = extra.response()
                assert (answer.status, answer.json()["error"]) == (503, "too_many_connections")
                assert int(answer.headers["retry-after"]) >= 1
        # The held connections finish their requests.
        held[0].send(b"Host: x\r\n\r\n")
        assert held[0].response().status == 200
    # Once they are gone, new clients are served again.
    capped.wait("/v2/health/ready")
    text = httpx.get(f"{capped.url}/metrics").text
    assert metric(text, "mplstm_http_refused_total", reason="too_many_connections") >= 3


def test_the_connection_cap_stays_below_the_open_file_limit_it_raises(
    repo: Path, tmp_path: Path
) -> None:
    # Started with a soft limit of 256 open files under a hard one of 600: the server
    # raises it to 600 and keeps 128 for itself, so client 473 gets a 503, not EMFILE.
    server = Server(repo, tmp_path / "server.log", command="mplstm", open_files=(256, 600))
    server.start()
    try:
        log = server.log()
        assert "open-file limit raised from 256 to 600" in log
        assert "MPLSTM_MAX_CONNECTIONS=4096 does not fit 600 open files; at most 472" in log
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(RawClient(server.port)) for _ in range(480)]
            for client in clients:
                client.send(b"GET /v2/health/live HTTP/1.1\r\n")
            refused = _answered(clients, at_least=480 - 472)
            assert len(refused) == 480 - 472
            for client in refused:
                answer = client.response()
                assert (answer.status, answer.json()["error"]) == (503, "too_many_connections")
        server.wait("/v2/health/ready")
        assert "Too many open files" not in server.log()
    finally:
        server.stop()


def _answered(clients: list[RawClient], at_least: int) -> list[RawClient]:
    """The clients the server has answered (or closed), once at least `at_least` are."""
    deadline = time.monotonic() + 30
    while True:
        ready, _, _ = select.select([c.sock for c in clients], [], [], 1.0)
        if len(ready) >= at_least or time.monotonic() > deadline:
            return [c for c in clients if c.sock in ready]
