"""The video route in the worker processes: on a CPU backend it infers there with the
batcher's answers and its own queue bound; a clip that kills its worker is refused."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_server import Server
from service_helpers import (
    DROPOUT_MODEL,
    assert_load_shed,
    batch_histogram,
    predict_all,
    scores_by_label,
    upload,
    write_clip,
)

from mplstm.core.errors import CorruptVideoError
from mplstm.core.limits import DecodeLimits
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.worker_pool import CRASH_ATTEMPTS
from mplstm.service.video_workers import VideoWorkers


def test_cpu_default_infers_video_in_the_workers_with_the_batchers_scores(
    server: Server, batcher_server: Server, clips: list[dict[str, Path]]
) -> None:
    described = [
        httpx.get(f"{srv.url}/v1/models/{DROPOUT_MODEL}").json()["video_inference"]
        for srv in (server, batcher_server)
    ]
    assert described == ["workers", "main"]
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


# Tasks: module-level, so that a spawned worker can unpickle them.


def die_once(data: dict[str, bytes], config: PreprocessConfig, marker: str) -> str:
    """Kill the worker the first time (no marker file yet); answer on the retry."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return "decoded"


def always_die(data: dict[str, bytes], config: PreprocessConfig) -> None:
    os._exit(3)


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_video_workers_retry_a_clip_whose_worker_died_and_refuse_one_that_always_kills(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        workers = await VideoWorkers.open(2, DecodeLimits())
        try:
            config = PreprocessConfig()
            marker = str(tmp_path / "died-once")
            views = {"front": io.BytesIO(b"")}
            assert await workers.run(die_once, views, config, marker) == "decoded"
            with pytest.raises(CorruptVideoError, match=f"crashed on this clip {CRASH_ATTEMPTS}"):
                await workers.run(always_die, {"front": io.BytesIO(b"")}, config)
            assert len(set(await workers.run_on_each(pid_after, 0.2))) == 2
        finally:
            await workers.close()

    asyncio.run(main())
