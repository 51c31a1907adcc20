"""Request bodies in bounded memory, and clients that leave mid-upload, on a real server.

The server-wide budget (MPLSTM_MAX_INFLIGHT_BYTES) makes a request wait for room, or
refuse it with 503 `server_busy` past the request deadline; a JSON body has its own,
smaller limit; a client that goes away is a 499 line in the log and a count in
/metrics, never a 500 or a traceback (mplstm/service/bodies.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from live_server import Server
from raw_http import (
    RawClient,
    binary_infer_body,
    metric,
    request_head,
    stalled_upload,
    wait_for_metric,
)
from service_helpers import DROPOUT_MODEL, mplstm_serve

MIB = 2**20
BUDGET, JSON_LIMIT, DEADLINE_S = 16 * MIB, 64 * 1024, 5
BODIES_ENV = {
    "MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL,
    "MPLSTM_MAX_INFLIGHT_BYTES": str(BUDGET),
    "MPLSTM_MAX_JSON_BYTES": str(JSON_LIMIT),
    "MPLSTM_REQUEST_TIMEOUT_S": str(DEADLINE_S),
    # A stalled upload holds its room until the test lets it go, not until a rate check.
    "MPLSTM_MIN_UPLOAD_BYTES_PER_S": "0",
    "MPLSTM_DECODE_WORKERS": "1",
}
INFER = f"/v2/models/{DROPOUT_MODEL}/infer"


@pytest.fixture(scope="module")
def bodies(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mplstm serve` with a 16 MiB body budget, a 64 KiB JSON limit, a 5 s deadline."""
    with mplstm_serve(repo, tmp_path_factory.mktemp("bodies"), BODIES_ENV) as server:
        yield server


def _metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics").text


def test_a_request_waits_for_room_in_the_budget_then_is_served(bodies: Server) -> None:
    holder, rest = stalled_upload(bodies.url, bodies.port, INFER, 10 * MIB)
    body, headers = binary_infer_body(10 * MIB)
    with holder, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, bodies.url + INFER, content=body, headers=headers)
        wait_for_metric(bodies.url, "mplstm_http_body_waiting", 1)
        holder.send(rest)
        assert holder.response().status == 400  # read whole, then refused as no clip
        answer = waiting.result(timeout=60)
    # It waited, then its whole body was read and checked (no 503).
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_tensor"), answer.text
    wait_for_metric(bodies.url, "mplstm_http_body_bytes_in_flight", 0)


def test_a_request_that_finds_no_room_in_time_is_503_server_busy(bodies: Server) -> None:
    holder, _ = stalled_upload(bodies.url, bodies.port, INFER, 10 * MIB)
    body, headers = binary_infer_body(10 * MIB)
    with holder:
        answer = httpx.post(bodies.url + INFER, content=body, headers=headers, timeout=60)
        assert (answer.status_code, answer.json()["error"]) == (503, "server_busy")
        assert int(answer.headers["retry-after"]) >= 1
    # The holder left: its room comes back, and the next request is served.
    wait_for_metric(bodies.url, "mplstm_http_body_bytes_in_flight", 0)
    answer = httpx.post(bodies.url + INFER, content=body, headers=headers, timeout=60)
    assert answer.status_code == 400


def test_a_body_larger_than_the_whole_budget_is_413_and_left_unread(bodies: Server) -> None:
    body, headers = binary_infer_body(BUDGET + 1024)
    with RawClient(bodies.port) as client:
        # The route sees a request once 64 KiB of its body have come (or at once, when the
        # client sends `Expect: 100-continue`); the rest is never read.
        client.send(request_head("POST", INFER, headers, length=len(body)) + body[: 100 * 1024])
        answer = client.response()
    assert (answer.status, answer.json()["error"]) == (413, "body_too_large")
    assert "MPLSTM_MAX_INFLIGHT_BYTES" in answer.json()["detail"]


def _json_clip(values: int) -> bytes:
    tensor = {"name": "clip", "shape": [values], "datatype": "UINT8", "data": [7] * values}
    return json.dumps({"inputs": [tensor]}).encode()


def test_json_bodies_have_their_own_smaller_limit(bodies: Server) -> None:
    big = _json_clip(JSON_LIMIT // 2)
    assert len(big) > JSON_LIMIT
    answers = [
        httpx.post(bodies.url + INFER, content=big),
        httpx.post(bodies.url + INFER, content=iter([big[:1000], big[1000:]])),  # chunked
        httpx.post(
            bodies.url + INFER,
            content=big,
            headers={"Inference-Header-Content-Length": str(len(big))},
        ),
    ]
    for answer in answers:
        assert (answer.status_code, answer.json()["error"]) == (413, "body_too_large")
        assert "binary tensors" in answer.json()["detail"]
    # Under the limit, the same request is parsed (and refused only as no clip for the model).
    small = httpx.post(bodies.url + INFER, content=_json_clip(1000))
    assert (small.status_code, small.json()["error"]) == (400, "bad_tensor")


def _vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_many_concurrent_large_bodies_stay_within_the_budget_in_memory(bodies: Server) -> None:
    assert bodies.process is not None
    pid, count, size = bodies.process.pid, 12, 8 * MIB
    body, headers = binary_infer_body(size)
    httpx.post(bodies.url + INFER, content=body, headers=headers, timeout=60)  # warm allocator
    before = _vm_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    with ThreadPoolExecutor(count) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(bodies.url + INFER, content=body, headers=headers, timeout=60),
                range(count),
            )
        )
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {400, 503} and statuses.count(400) >= 2, statuses
    peak_growth = (_vm_kib(pid, "VmHWM") - before) * 1024
    # 96 MiB were sent at once; at most the 16 MiB budget of them is held in memory.
    assert peak_growth < BUDGET + 24 * MIB, f"peak RSS grew by {peak_growth / MIB:.0f} MiB"


@pytest.mark.parametrize("route", ["v1", "v2"])
def test_a_client_that_leaves_mid_upload_is_one_499_line_and_a_count(
    bodies: Server, route: str
) -> None:
    name = "mplstm_http_client_disconnects_total"
    before = metric(_metrics(bodies), name)
    if route == "v1":
        path, headers = "/v1/predict", {"Content-Type": "multipart/form-data; boundary=x"}
        start = b'--x\r\nContent-Disposition: form-data; name="front"; filename="a.mp4"\r\n\r\n'
        start += bytes(100 * 1024)
    else:
        path = INFER
        start, headers = binary_infer_body(200_000)
        start = start[: 100 * 1024]
    for _ in range(3):
        with RawClient(bodies.port) as client:
            client.send(request_head("POST", path, headers, length=200_000) + start)
            # The route holds the body's room: it is reading the upload when the client leaves.
            wait_for_metric(bodies.url, "mplstm_http_body_bytes_in_flight", 200_000)
        wait_for_metric(bodies.url, "mplstm_http_body_bytes_in_flight", 0)
    wait_for_metric(bodies.url, name, before + 3)
    log = bodies.log()
    assert log.count(f"POST {path} 499") >= 3
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert f"POST {path} 500" not in log
    assert bodies.healthy()
    assert metric(_metrics(bodies), name) == before + 3


def test_a_client_that_leaves_before_its_first_64_kib_is_counted_without_reaching_the_app(
    bodies: Server,
) -> None:
    name = "mplstm_http_client_disconnects_total"
    before = metric(_metrics(bodies), name)
    body, headers = binary_infer_body(200_000)
    for _ in range(3):
        with RawClient(bodies.port) as client:
            client.send(request_head("POST", INFER, headers, length=len(body)) + body[:1024])
    wait_for_metric(bodies.url, name, before + 3)
    log = bodies.log()
    assert "went away mid-upload" in log and "Traceback" not in log
    # The app never saw these requests: no access line, no room held in the budget.
    assert metric(_metrics(bodies), "mplstm_http_body_bytes_in_flight") == 0


def test_a_client_that_expects_100_continue_gets_its_refusal_before_sending_the_body(
    bodies: Server,
) -> None:
    body, headers = binary_infer_body(BUDGET + 1024)
    with RawClient(bodies.port) as client:
        expect = {**headers, "Expect": "100-continue"}
        client.send(request_head("POST", INFER, expect, length=len(body)))  # no body sent
        answer = client.response()
    assert (answer.status, answer.json()["error"]) == (413, "body_too_large")
