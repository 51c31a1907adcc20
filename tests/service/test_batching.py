"""The dynamic batcher: concurrent requests share batches, results do not depend on it,
and a full queue sheds load with 503 + Retry-After instead of failing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_server import Server
from service_helpers import (
    DROPOUT_MODEL,
    FRAMES,
    SIZE,
    VIEWS,
    assert_load_shed,
    batch_histogram,
    predict_all,
    scores_by_label,
    upload,
)

from mplstm.core.package import load_package
from mplstm.inference.onnxruntime import OnnxRuntimeBackend
from mplstm.inference.options import BackendOptions
from mplstm.service.batcher import DynamicBatcher
from mplstm.service.metrics import ServiceMetrics


def test_concurrent_requests_are_batched_with_results_equal_to_one_at_a_time(
    batcher_server: Server, clips: list[dict[str, Path]]
) -> None:
    server = batcher_server
    alone = [httpx.post(f"{server.url}/v1/predict?top_k=4", files=upload(c)).json() for c in clips]
    ones_before, batches_before = batch_histogram(
        httpx.get(f"{server.url}/metrics").text, DROPOUT_MODEL
    )
    burst = clips * 8  # 32 requests
    answers = asyncio.run(predict_all(server.url, burst))
    ones_after, batches_after = batch_histogram(
        httpx.get(f"{server.url}/metrics").text, DROPOUT_MODEL
    )
    batches = batches_after - batches_before
    assert batches < len(burst), "every request ran in a batch of its own"
    assert ones_after - ones_before < batches, "no batch held more than one clip"
    assert max(a["timings_ms"]["total"] for a in answers) > 0
    for clip_index, answer in zip(
        [i % len(clips) for i in range(len(burst))], answers, strict=True
    ):
        expected = scores_by_label(alone[clip_index])
        got = scores_by_label(answer)
        assert got.keys() == expected.keys()
        np.testing.assert_allclose(
            [got[k] for k in expected], list(expected.values()), rtol=0, atol=1e-6
        )


def _tensor_request(batch: int, frames: int) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor v2 request with `batch` random clips of `frames` frames."""
    clip = np.random.default_rng(batch).integers(
        0, 256, (batch, len(VIEWS), frames, 1, SIZE, SIZE), np.uint8
    )
    spec = {
        "name": "clip",
        "datatype": "UINT8",
        "shape": list(clip.shape),
        "parameters": {"binary_data_size": clip.nbytes},
    }
    header = json.dumps({"inputs": [spec]}).encode()
    return header + clip.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


async def _burst(
    url: str, count: int, body: bytes, headers: dict[str, str]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as client:
        return await asyncio.gather(
            *(
                client.post(f"{url}/v2/models/{DROPOUT_MODEL}/infer", content=body, headers=headers)
                for _ in range(count)
            )
        )


def test_full_queue_answers_503_with_retry_after_and_the_server_stays_healthy(
    repo: Path, tmp_path: Path
) -> None:
    # One waiting request at most, and each request a whole batch of 8 long clips, so a
    # burst of 32 arrives much faster than the model can answer it.
    env = {"MPLSTM_MAX_QUEUE": "1", "MPLSTM_MAX_BATCH": "8", "MPLSTM_INTRA_OP_THREADS": "1"}
    server = Server(repo, tmp_path / "server.log", env).start()
    try:
        body, headers = _tensor_request(batch=8, frames=16)
        responses = asyncio.run(_burst(server.url, 32, body, headers))
        assert_load_shed(responses)
        assert server.healthy()
        one = httpx.post(
            f"{server.url}/v2/models/{DROPOUT_MODEL}/infer", content=body, headers=headers
        )
        assert one.status_code == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def backend(repo: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        load_package(repo / DROPOUT_MODEL / "1"), BackendOptions(device="cpu")
    )


def test_batcher_groups_clips_of_different_length_and_each_gets_its_own_rows(
    backend: OnnxRuntimeBackend,
) -> None:
    rng = np.random.default_rng(3)
    clips = [
        rng.integers(0, 256, (1, len(VIEWS), frames, 1, SIZE, SIZE), np.uint8)
        for frames in (FRAMES, FRAMES * 2, FRAMES, FRAMES * 2, FRAMES)
    ]
    masks = [np.ones((1, len(VIEWS)), bool) for _ in clips]
    metrics = ServiceMetrics()

    async def run() -> list:
        batcher = DynamicBatcher(
            "m", backend.infer, max_batch=8, max_delay_s=0.2, max_queue=16, metrics=metrics
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(c, m, timeout_s=30) for c, m in zip(clips, masks, strict=True))
            )
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    # Two batches, one per length: 3 clips of T = 8 and 2 of T = 16.
    assert sorted(r.batch_size for r in results) == [2, 2, 3, 3, 3]
    for clip, mask, result in zip(clips, masks, results, strict=True):
        alone = backend.infer(clip, mask)
        np.testing.assert_allclose(result.probabilities, alone.probabilities, atol=1e-6)
    text = metrics.render().decode()
    assert 'nv_inference_batch_size_count{model="m"} 2.0' in text
