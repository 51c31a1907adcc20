"""On a CPU backend the video route infers in the decode workers: same answers as the
batcher, its own queue bound, and sessions kept per model in each worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_server import Server
from service_helpers import (
    DROPOUT_MODEL,
    FULL_MODEL,
    assert_load_shed,
    batch_histogram,
    predict_all,
    scores_by_label,
    upload,
    write_clip,
)

from mplstm.core.package import load_package
from mplstm.service.backends.base import BackendUnavailableError
from mplstm.service.backends.cpu_worker import cpu_session
from mplstm.service.settings import VideoInference
from mplstm.service.worker_inference import infers_in_workers


def test_cpu_default_infers_video_in_the_workers_with_the_batchers_scores(
    server: Server, batcher_server: Server, clips: list[dict[str, Path]]
) -> None:
    described = [
        httpx.get(f"{srv.url}/v1/models/{DROPOUT_MODEL}").json()["video_inference"]
        for srv in (server, batcher_server)
    ]
    assert described == ["workers", "batcher"]
    ones_before, runs_before = batch_histogram(
        httpx.get(f"{server.url}/metrics").text, DROPOUT_MODEL
    )
    burst = clips * 4
    in_workers = asyncio.run(predict_all(server.url, burst))
    through_batcher = asyncio.run(predict_all(batcher_server.url, burst))
    for got, expected in zip(in_workers, through_batcher, strict=True):
        assert got["views_used"] == expected["views_used"]
        got_scores, expected_scores = scores_by_label(got), scores_by_label(expected)
        assert got_scores.keys() == expected_scores.keys()
        np.testing.assert_allclose(
            [got_scores[k] for k in expected_scores], list(expected_scores.values()), atol=1e-5
        )
        timings = got["timings_ms"]  # each rounded to the microsecond
        assert timings["decode"] > 0 and timings["inference"] > 0
        assert (
            timings["decode"] + timings["queue"] + timings["inference"] <= timings["total"] + 0.01
        )
    # Every clip ran alone, in the worker that decoded it.
    ones_after, runs_after = batch_histogram(httpx.get(f"{server.url}/metrics").text, DROPOUT_MODEL)
    assert runs_after - runs_before == len(burst)
    assert ones_after - ones_before == len(burst)


def test_video_queue_bound_in_the_workers_answers_503_with_retry_after(
    repo: Path, tmp_path: Path
) -> None:
    # One request in flight at most, and long clips (about 0.1 s each to decode), so the
    # burst arrives while the first is still decoding.
    env = {"MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL, "MPLSTM_MAX_QUEUE": "1"}
    long_clip = write_clip(tmp_path / "long", seed=7, frames=1500, fps=50.0)
    server = Server(repo, tmp_path / "server.log", env).start()
    try:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post(f"{server.url}/v1/predict", files=upload(long_clip))
                        for _ in range(16)
                    )
                )

        responses = asyncio.run(burst())
        assert_load_shed(responses)
        assert server.healthy()
        again = httpx.post(f"{server.url}/v1/predict", files=upload(long_clip), timeout=60)
        assert again.status_code == 200, again.text
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("choice", "backend", "on_gpu", "in_workers"),
    [
        (VideoInference.AUTO, "onnxruntime", False, True),
        (VideoInference.AUTO, "onnxruntime", True, False),
        (VideoInference.AUTO, "tensorrt", True, False),
        (VideoInference.BATCHER, "onnxruntime", False, False),
        (VideoInference.WORKERS, "onnxruntime", False, True),
    ],
)
def test_auto_places_video_inference_in_the_workers_only_on_the_cpu(
    choice: VideoInference, backend: str, on_gpu: bool, in_workers: bool
) -> None:
    assert infers_in_workers(choice, backend, on_gpu) is in_workers


@pytest.mark.parametrize(("backend", "on_gpu"), [("onnxruntime", True), ("tensorrt", True)])
def test_workers_on_a_gpu_backend_is_refused_with_what_to_set(backend: str, on_gpu: bool) -> None:
    with pytest.raises(
        BackendUnavailableError, match=r"MPLSTM_VIDEO_INFERENCE=workers.*auto or batcher"
    ):
        infers_in_workers(VideoInference.WORKERS, backend, on_gpu)


def test_a_worker_keeps_a_session_per_served_model_and_drops_the_least_recent(repo: Path) -> None:
    dropout, full = (load_package(repo / name / "1") for name in (DROPOUT_MODEL, FULL_MODEL))
    first = cpu_session(dropout, 1, keep=2)
    other = cpu_session(full, 1, keep=2)
    assert other is not first
    assert cpu_session(dropout, 1, keep=2) is first  # both models kept
    assert cpu_session(full, 1, keep=1) is other  # the most recent stays...
    assert cpu_session(dropout, 1, keep=1) is not first  # ...the other was closed
