"""Live sessions against a real server (uvicorn subprocess) over real WebSockets.

Parity: a clip's files streamed through the session end with the answer /v1 gives for the
same files from the same live package (probabilities within 1e-4, as at export). Every bad
input closes its own session with the documented code and reason, and the server goes
on serving others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import Server
from service_helpers import FULL_MODEL, SIZE, VIEWS
from stream_helpers import (
    IDLE_S,
    LIVE_MODEL,
    MAX_MESSAGE_BYTES,
    MAX_SESSIONS,
    frames_message,
    metric,
    offline_answer,
    pixels,
    same_predictions,
    session,
    until_closed,
    until_final,
    wait_for_sessions,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mplstm.core.video_writer import write_video
from mplstm.service.stream_client import StreamOptions, run_stream


def _stream_files(server: Server, clip: dict[str, Path], **options) -> list[dict]:
    views = {name: str(path) for name, path in clip.items()}
    messages: list[dict] = []
    code = asyncio.run(
        run_stream(StreamOptions(server.url, LIVE_MODEL, views, **options), messages.append)
    )
    assert code == 0, messages[-3:]
    return messages


def test_streaming_a_clips_files_ends_with_the_offline_answer_of_the_same_package(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    messages = _stream_files(live_server, clips[0], top_k=4)
    (final,) = [m for m in messages if m["type"] == "final"]
    same_predictions(final["predictions"], offline_answer(live_server.url, clips[0]))
    updates = [m for m in messages if m["type"] == "update"]
    # 20 frames at 25 fps = 0.8 s: 8 steps at 10 steps/s, an update after each.
    assert [u["step"] for u in updates] == list(range(1, 9)) and final["steps"] == 8
    assert updates[-1]["predictions"] == final["predictions"]


def test_views_at_different_rates_and_start_offsets_give_the_offline_answer(
    live_server: Server, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    clip = {}
    for name, fps, start in zip(VIEWS, (25.0, 30.0, 15.0), (0.0, 0.3, 0.1), strict=True):
        count = int(1.1 * fps)
        # Coarse blocks, not pixel noise: the offline route's camera checks refuse noise.
        frames = rng.integers(0, 256, (count, 6, 6), np.uint8).repeat(8, 1).repeat(8, 2)
        clip[name] = write_video(tmp_path / f"{name}.mp4", frames, fps, start_time=start)
    messages = _stream_files(live_server, clip, top_k=4, realtime=True)
    (final,) = [m for m in messages if m["type"] == "final"]
    same_predictions(final["predictions"], offline_answer(live_server.url, clip))
    assert not [m for m in messages if m["type"] == "view"]  # no camera went silent


def _stream_cli(server: Server, *args: str) -> list[dict[str, Any]]:
    """`mplstm stream` against `server`'s live model: its JSON lines, after a clean exit."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mplstm",
            "stream",
            "--url",
            server.url,
            "--model",
            LIVE_MODEL,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_cli_prints_one_json_line_per_message_and_the_final_answer_last(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    views = [f"--view={name}={path}" for name, path in clips[1].items()]
    lines = _stream_cli(live_server, "--top-k", "4", *views)
    assert lines[0]["type"] == "ready" and lines[-1]["type"] == "final"
    same_predictions(lines[-1]["predictions"], offline_answer(live_server.url, clips[1]))


def test_two_utterances_in_one_session_each_get_a_final_answer(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    messages = _stream_files(live_server, clips[2], utterances=((0.0, 0.35), (0.4, 0.8)))
    finals = [m for m in messages if m["type"] == "final"]
    # Steps at start + 0.05, 0.15, ... before each end: 3 in 0.35 s, 4 in 0.4 s.
    assert [f["steps"] for f in finals] == [3, 4]


async def _camera_drops(url: str) -> tuple[list[dict], float]:
    ws = await session(url)
    await ws.send(json.dumps({"type": "start", "t": 0.0}))
    for k in range(30):  # 1.2 s at 25 fps; "side" is silent from 0.3 s to 0.8 s
        t = k * 0.04
        views = [v for v in VIEWS if v != "side" or not 0.3 <= t < 0.8]
        await ws.send(frames_message(*((v, t, pixels(k)) for v in views)))
    await ws.send(json.dumps({"type": "end", "t": 1.2}))
    outcome = await until_final(ws)
    await ws.close()
    return outcome.messages, metric(
        url, "mplstm_stream_masked_steps_total", model=LIVE_MODEL, view="side"
    )


def test_a_camera_that_drops_mid_utterance_is_masked_then_restored(live_server: Server) -> None:
    before = metric(
        live_server.url, "mplstm_stream_masked_steps_total", model=LIVE_MODEL, view="side"
    )
    messages, after = asyncio.run(_camera_drops(live_server.url))
    events = [(m["view"], m["state"]) for m in messages if m["type"] == "view"]
    assert events == [("side", "masked"), ("side", "restored")]
    (final,) = [m for m in messages if m["type"] == "final"]
    assert final["steps"] == 12 and 1 <= final["masked_steps"]["side"] <= 5
    masked_updates = [
        m for m in messages if m["type"] == "update" and "side" not in m["views_used"]
    ]
    assert len(masked_updates) == final["masked_steps"]["side"]
    assert after - before == final["masked_steps"]["side"]


async def _concurrent(url: str, clip: dict[str, Path], count: int) -> list[list[dict]]:
    views = {name: str(path) for name, path in clip.items()}

    async def one() -> list[dict]:
        messages: list[dict] = []
        assert (
            await run_stream(StreamOptions(url, LIVE_MODEL, views, top_k=4), messages.append) == 0
        )
        return messages

    return await asyncio.gather(*(one() for _ in range(count)))


def test_several_sessions_at_once_share_batches_and_each_gets_the_offline_answer(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    wait_for_sessions(live_server.url, 0)
    batches_before = metric(live_server.url, "mplstm_stream_batch_size_count", model=LIVE_MODEL)
    steps_before = metric(live_server.url, "mplstm_stream_steps_total", model=LIVE_MODEL)
    results = asyncio.run(_concurrent(live_server.url, clips[3], count=4))
    expected = offline_answer(live_server.url, clips[3])
    for messages in results:
        same_predictions(next(m for m in messages if m["type"] == "final")["predictions"], expected)
    steps = metric(live_server.url, "mplstm_stream_steps_total", model=LIVE_MODEL) - steps_before
    batches = (
        metric(live_server.url, "mplstm_stream_batch_size_count", model=LIVE_MODEL) - batches_before
    )
    assert steps == 4 * 8
    assert batches < steps  # continuous batching: some inference ran several sessions' steps


# -- refusals -------------------------------------------------------------------------------


async def _refused(url: str, *messages: str | bytes) -> tuple[int | None, str, list[dict]]:
    ws = await session(url)
    with contextlib.suppress(ConnectionClosed):  # the server may close before the last
        for message in messages:
            await ws.send(message)
    outcome = await until_closed(ws)
    return outcome.code, outcome.reason, outcome.messages


def _start() -> str:
    return json.dumps({"type": "start", "t": 0.0})


BAD_INPUTS = {
    "unknown_view": ([frames_message(("ceiling", 0.0, pixels(0)))], 1007, "unknown view 'ceiling'"),
    "wrong_frame_size": (
        [frames_message(("front", 0.0, np.zeros((1, SIZE, SIZE - 1), np.uint8)))],
        1007,
        "raw frame of",
    ),
    "undecodable_image": (
        [frames_message(("front", 0.0, b"not a jpeg" * 10), fmt="jpeg")],
        1007,
        "does not decode",
    ),
    "timestamps_backwards": (
        [frames_message(("front", 0.5, pixels(0))), frames_message(("front", 0.2, pixels(1)))],
        1007,
        "backwards",
    ),
    "far_outside_the_window": (
        [frames_message(("front", 0.0, pixels(0))), frames_message(("side", 60.0, pixels(1)))],
        1007,
        "outside the 2 s window",
    ),
    "binary_garbage": ([bytes(range(256)) * 4], 1007, "header"),
    "text_that_is_not_json": (["hello"], 1007, "not JSON"),
    "unknown_message_type": ([json.dumps({"type": "dance", "t": 0})], 1003, "unknown message type"),
    "unknown_frame_format": (
        [frames_message(("front", 0.0, b"GIF89a"), fmt="gif")],
        1003,
        "format 'gif'",
    ),
    "end_twice": (
        [json.dumps({"type": "end", "t": 1.0}), json.dumps({"type": "end", "t": 2.0})],
        1007,
        "without an open utterance",
    ),
    "oversize_message": ([b"\x00" * (MAX_MESSAGE_BYTES + 1)], 1009, f"at most {MAX_MESSAGE_BYTES}"),
}


@pytest.mark.parametrize(("messages", "code", "reason"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_closes_its_session_with_the_documented_code_and_reason(
    live_server: Server, messages: list, code: int, reason: str
) -> None:
    got_code, got_reason, _ = asyncio.run(_refused(live_server.url, _start(), *messages))
    assert got_code == code and reason in got_reason, (got_code, got_reason)
    assert live_server.healthy()


def test_an_idle_session_is_closed_with_1008(live_server: Server) -> None:
    code, reason, _ = asyncio.run(_refused(live_server.url))
    assert code == 1008 and f"no message for {IDLE_S:g} s" in reason


async def _over_capacity(url: str) -> tuple[int | None, str]:
    held = [await session(url) for _ in range(MAX_SESSIONS)]
    try:
        extra = await connect(ws_url(url))
        outcome = await until_closed(extra)
        return outcome.code, outcome.reason
    finally:
        for ws in held:
            await ws.close()


def test_sessions_beyond_the_limit_are_told_to_retry_later_with_1013(live_server: Server) -> None:
    wait_for_sessions(live_server.url, 0)
    code, reason = asyncio.run(_over_capacity(live_server.url))
    assert code == 1013 and f"holds {MAX_SESSIONS} sessions" in reason
    wait_for_sessions(live_server.url, 0)


async def _vanish(url: str) -> None:
    ws = await session(url)
    await ws.send(_start())
    for k in range(5):
        await ws.send(frames_message(*((v, k * 0.04, pixels(k)) for v in VIEWS)))
    ws.transport.abort()  # no close frame: the client just goes


def test_a_client_that_vanishes_mid_utterance_frees_its_session(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    wait_for_sessions(live_server.url, 0)
    asyncio.run(_vanish(live_server.url))
    wait_for_sessions(live_server.url, 0)
    assert (
        metric(live_server.url, "mplstm_stream_closed_total", model=LIVE_MODEL, code="disconnect")
        >= 1
    )
    _stream_files(live_server, clips[0])  # the server goes on


async def _flood_beside_a_session(
    url: str, clip: dict[str, Path]
) -> tuple[list[dict], list[dict], float]:
    views = {name: str(path) for name, path in clip.items()}
    peak = 0.0

    async def flood() -> list[dict]:
        ws = await session(url)
        await ws.send(_start())
        # 40 s of frames (1,000 per view) as fast as the socket takes them: far faster than
        # real time. The server reads on only as its steps run (backpressure).
        for k in range(1000):
            await ws.send(frames_message(*((v, k * 0.04, pixels(k % 7)) for v in VIEWS)))
        await ws.send(json.dumps({"type": "end", "t": 40.0}))
        outcome = await until_final(ws, timeout=120)
        await ws.close()
        return outcome.messages

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(
                peak,
                await asyncio.to_thread(
                    metric, url, "mplstm_stream_buffered_frames", model=LIVE_MODEL
                ),
            )
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    flooded, normal = [], []
    try:
        normal_messages: list[dict] = []
        flooded, code = await asyncio.gather(
            flood(),
            run_stream(StreamOptions(url, LIVE_MODEL, views, top_k=4), normal_messages.append),
        )
        normal = normal_messages
        assert code == 0
    finally:
        watcher.cancel()
    return flooded, normal, peak


def test_a_client_flooding_faster_than_real_time_is_held_back_and_others_are_unaffected(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    flooded, normal, peak = asyncio.run(_flood_beside_a_session(live_server.url, clips[0]))
    (final,) = [m for m in flooded if m["type"] == "final"]
    assert final["steps"] == 400  # every step of 40 s at 10 steps/s ran, none dropped
    same_predictions(
        next(m for m in normal if m["type"] == "final")["predictions"],
        offline_answer(live_server.url, clips[0]),
    )
    # Memory is bounded: at most a buffer of frames per view and session.
    assert peak <= 2 * len(VIEWS) * 96


# -- the handshake ----------------------------------------------------------------------------


async def _handshake_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    try:
        async with connect(url, additional_headers=headers or {}):
            return 101, {}
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")


def test_unknown_and_offline_models_are_refused_at_the_handshake(live_server: Server) -> None:
    status, body = asyncio.run(_handshake_status(ws_url(live_server.url, model="nope")))
    assert status == 404 and body["error"] == "model_not_found"
    status, body = asyncio.run(_handshake_status(ws_url(live_server.url, model=FULL_MODEL)))
    assert status == 409 and body["error"] == "not_live" and "predict" in body["detail"]


def test_sessions_need_the_same_api_keys_as_every_route(live_repo: Path, tmp_path: Path) -> None:
    env = {"MPLSTM_API_KEYS": "k1,k2", "MPLSTM_DECODE_WORKERS": "1"}
    server = Server(live_repo, tmp_path / "server.log", env).start()
    try:
        status, body = asyncio.run(_handshake_status(ws_url(server.url)))
        assert status == 401 and body["error"] == "unauthorized"
        status, _ = asyncio.run(_handshake_status(ws_url(server.url), {"X-API-Key": "wrong"}))
        assert status == 401
        status, _ = asyncio.run(
            _handshake_status(ws_url(server.url), {"Authorization": "Bearer k2"})
        )
        assert status == 101
    finally:
        server.stop()


def test_stream_metrics_are_exported(live_server: Server) -> None:
    text = httpx.get(f"{live_server.url}/metrics").text
    for name in (
        "mplstm_stream_sessions",
        "mplstm_stream_steps_total",
        "mplstm_stream_update_latency_seconds_bucket",
        "mplstm_stream_masked_steps_total",
        "mplstm_stream_buffered_frames",
    ):
        assert name in text, name


def test_a_live_source_url_is_decoded_as_it_arrives_and_streams_one_utterance(
    live_server: Server, clips: list[dict[str, Path]]
) -> None:
    # "file:" URLs go through FFmpeg's protocol layer as an RTSP/HTTP/UDP source would:
    # frames are sent as they decode (at their own pace, as cameras deliver them), one
    # utterance from the first frame to the last.
    views = [f"--view={name}=file:{path}" for name, path in clips[2].items()]
    lines = _stream_cli(live_server, "--realtime", *views)
    final = lines[-1]
    # 20 frames at 25 fps, the last at 0.76 s: steps at 0.05 ... 0.75 s.
    assert final["type"] == "final" and final["steps"] == 8
    assert not [m for m in lines if m["type"] == "view"]
