"""Triton's schedule policy (`priority`, `timeout`) on REST and gRPC alike, seen from the
clients; and in the batcher itself, where the order of its runs is recorded."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from grpc_helpers import executions, grpc_inputs, random_clip, wait_pending
from live_server import Server
from service_helpers import DROPOUT_MODEL, VIEWS
from tritonclient.utils import InferenceServerException

from mplstm.core.package import load_package
from mplstm.inference.backend import InferenceOutput
from mplstm.inference.onnxruntime import OnnxRuntimeBackend
from mplstm.inference.options import BackendOptions
from mplstm.service.batcher import DynamicBatcher
from mplstm.service.errors import QueueTimeoutError
from mplstm.service.metrics import ServiceMetrics

# A batch opens at its first request and waits this long for more (MPLSTM_MAX_DELAY_MS),
# unless max_batch (32) clips wait: long enough that the tests never race it.
DELAY_MS = 5000


@pytest.fixture(scope="module")
def slow_batches(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose batches close only when full (32 clips) or after DELAY_MS."""
    env = {"MPLSTM_MAX_DELAY_MS": str(DELAY_MS), "MPLSTM_MAX_BATCH": "32"}
    srv = Server(repo, tmp_path_factory.mktemp("policy") / "server.log", env).start()
    yield srv
    srv.stop()


def _rest_body(clip: np.ndarray, parameters: dict[str, int]) -> tuple[bytes, dict[str, str]]:
    spec = {
        "name": "clip",
        "datatype": "UINT8",
        "shape": list(clip.shape),
        "parameters": {"binary_data_size": clip.nbytes},
    }
    header = json.dumps({"inputs": [spec], "parameters": parameters}).encode()
    return header + clip.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_a_higher_priority_request_over_grpc_or_rest_is_batched_before_earlier_ones(
    slow_batches: Server,
) -> None:
    server = slow_batches
    finished: list[str] = []

    async def over_grpc(aio: grpcaio.InferenceServerClient, name: str, clips: int, priority: int):
        await aio.infer(DROPOUT_MODEL, grpc_inputs(random_clip(clips, 8)), priority=priority)
        finished.append(name)

    async def over_rest(http: httpx.AsyncClient, name: str, clips: int) -> None:
        body, headers = _rest_body(random_clip(clips, 8), {})  # no priority: the default, 2
        r = await http.post(
            f"{server.url}/v2/models/{DROPOUT_MODEL}/infer", content=body, headers=headers
        )
        assert r.status_code == 200, r.text
        finished.append(name)

    async def run() -> None:
        async with (
            grpcaio.InferenceServerClient(server.grpc_target) as aio,
            httpx.AsyncClient(timeout=120) as http,
        ):
            # 10 + 10 clips wait for a batch of 32; 20 more at the highest level close it.
            # By arrival the batch would be [low, default]; by priority it is [high,
            # default], and low waits for the next batch, DELAY_MS after its arrival.
            calls = [asyncio.create_task(over_grpc(aio, "low", 10, 3))]
            await asyncio.to_thread(wait_pending, server, 1)
            calls.append(asyncio.create_task(over_rest(http, "default", 10)))
            await asyncio.to_thread(wait_pending, server, 2)
            calls.append(asyncio.create_task(over_grpc(aio, "high", 20, 1)))
            await asyncio.gather(*calls)

    asyncio.run(run())
    assert sorted(finished[:2]) == ["default", "high"] and finished[2] == "low", finished


def test_a_request_whose_timeout_passes_in_the_queue_is_answered_and_never_run(
    slow_batches: Server,
) -> None:
    server = slow_batches
    small = random_clip(1, 8)
    with grpcclient.InferenceServerClient(server.grpc_target) as client:
        before = executions(client, DROPOUT_MODEL)
        # 2 ms in the queue at most; the batch would close DELAY_MS after it arrived.
        with pytest.raises(InferenceServerException) as caught:
            client.infer(DROPOUT_MODEL, grpc_inputs(small), timeout=2000)
        assert str(caught.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
        assert "queue_timeout" in caught.value.message() and "not run" in caught.value.message()
        body, headers = _rest_body(small, {"timeout": 2000})
        rest = httpx.post(
            f"{server.url}/v2/models/{DROPOUT_MODEL}/infer", content=body, headers=headers
        )
        assert (rest.status_code, rest.json()["error"]) == (503, "queue_timeout")
        assert rest.headers["retry-after"] == "1"
        # The client's own deadline (gRPC): it stops waiting, and the server drops it too.
        with pytest.raises(InferenceServerException) as caught:
            client.infer(DROPOUT_MODEL, grpc_inputs(small), client_timeout=0.5)
        assert str(caught.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
        wait_pending(server, 0, exactly=True)
        # Past the delay, a batch would have run had any of the three stayed queued.
        time.sleep(DELAY_MS / 1000 + 0.5)
        assert executions(client, DROPOUT_MODEL) == before


@pytest.fixture(scope="module")
def backend(repo: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        load_package(repo / DROPOUT_MODEL / "1"), BackendOptions(device="cpu", threads=1)
    )


def test_the_batcher_takes_waiting_requests_by_level_then_arrival_and_expires_timeouts(
    backend: OnnxRuntimeBackend,
) -> None:
    release = threading.Event()
    ran: list[int] = []

    def gated(clip: np.ndarray, mask: np.ndarray) -> InferenceOutput:
        # The test's own callable around the real backend: the first run waits, so the
        # rest queue up behind it; each run records the tags of its clips (pixel 0).
        if not ran:
            release.wait(30)
        ran.extend(int(t) for t in clip[:, 0, 0, 0, 0, 0])
        return backend.infer(clip, mask)

    def tagged(tag: int) -> np.ndarray:
        clip = np.zeros((1, len(VIEWS), 8, 1, 32, 32), np.uint8)
        clip[0, 0, 0, 0, 0, 0] = tag
        return clip

    mask = np.ones((1, len(VIEWS)), bool)

    async def run() -> list[object]:
        batcher = DynamicBatcher(
            "m", gated, max_batch=2, max_delay_s=0.0, max_queue=16, metrics=ServiceMetrics(),
            default_level=2,
        )  # fmt: skip
        batcher.start()
        first = asyncio.create_task(batcher.submit(tagged(1), mask, timeout_s=30))
        await asyncio.sleep(0.2)  # the first batch is in the gated run
        levels = {10: 3, 11: None, 12: 1, 13: 3, 14: 1}  # tag -> level (None: default 2)
        rest = [
            asyncio.create_task(batcher.submit(tagged(t), mask, timeout_s=30, level=lv))
            for t, lv in levels.items()
        ]
        expiring = asyncio.create_task(
            batcher.submit(tagged(99), mask, timeout_s=30, level=1, queue_timeout_s=0.05)
        )
        await asyncio.sleep(0.3)
        release.set()
        try:
            return await asyncio.gather(first, *rest, expiring, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert isinstance(results[-1], QueueTimeoutError)
    assert not any(isinstance(r, BaseException) for r in results[:-1])
    # Level 1 (12, 14) first, then the default level 2 (11), then level 3 (10, 13), each
    # level in arrival order, two clips a batch; the expired 99 never ran.
    assert ran == [1, 12, 14, 11, 10, 13]
