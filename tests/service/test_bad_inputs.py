"""The bad-input corpus: real broken files and hostile requests, each a 4xx with its code.

Every case runs against the shared server (tight limits from `SHARED_ENV`), which must
still be ready afterwards: no bad input may cost a 500 or the server's health.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from live_server import Server
from service_helpers import DROPOUT_MODEL, SHARED_ENV, upload, write_clip

from mplstm.core.contact_sheet import write_png
from mplstm.core.video_writer import write_video

Files = list[tuple[str, tuple[str, bytes, str]]]


def _audio_only(path: Path) -> bytes:
    """An MP4 holding one AAC audio stream and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path.read_bytes()


def _with_front(clip: dict[str, Path], name: str, data: bytes) -> Files:
    """The clip's files with the front view replaced by `data` (sent as `name`)."""
    files = upload(clip)
    return [("front", (name, data, "video/mp4")), *[f for f in files if f[0] != "front"]]


def _corpus(tmp: Path, clip: dict[str, Path]) -> dict[str, tuple[Files, int, str]]:
    """Case name -> (multipart files, expected status, expected error code)."""
    good = clip["front"].read_bytes()
    max_frames = int(SHARED_ENV["MPLSTM_MAX_FRAMES"])
    long_view = write_video(tmp / "long.mp4", np.zeros((max_frames + 20, 16, 16), np.uint8), 25.0)
    wide_view = write_video(tmp / "wide.mp4", np.zeros((2, 480, 640), np.uint8), 25.0)
    png = write_png(tmp / "image.png", np.full((64, 64, 3), 128, np.uint8)).read_bytes()
    late = write_clip(tmp / "late", seed=9, frames=60)  # 2.4 s against 0.8 s
    return {
        "zero_bytes": (_with_front(clip, "a.mp4", b""), 415, "unreadable_container"),
        "random_bytes": (
            _with_front(clip, "a.mp4", np.random.default_rng(0).bytes(20_000)),
            415,
            "unreadable_container",
        ),
        "truncated_mp4": (
            _with_front(clip, "a.mp4", good[: len(good) // 2]),
            415,
            "unreadable_container",
        ),
        # FFmpeg opens a PNG as a one-frame video; one still frame covers no time span,
        # so it cannot be in sync with real views.
        "image_renamed_mp4": (_with_front(clip, "a.mp4", png), 415, "still_image"),
        "audio_only": (
            _with_front(clip, "a.mp4", _audio_only(tmp / "audio.mp4")),
            415,
            "no_video_stream",
        ),
        "frame_count_bomb": (
            _with_front(clip, "a.mp4", long_view.read_bytes()),
            413,
            "clip_too_long",
        ),
        "resolution_bomb": (
            _with_front(clip, "a.mp4", wide_view.read_bytes()),
            413,
            "clip_too_large",
        ),
        "views_out_of_sync": (
            _with_front(clip, "a.mp4", late["front"].read_bytes()),
            422,
            "views_out_of_sync",
        ),
        "too_many_parts": (
            upload(clip) + [(f"extra{i}", (f"{i}.mp4", good, "video/mp4")) for i in range(5)],
            413,
            "too_many_parts",
        ),
        "view_as_text_field": (
            [("front", (None, b"not a file", "text/plain")), *upload(clip)[1:]],  # type: ignore[list-item]
            422,
            "bad_views",
        ),
    }


CASES = (
    "zero_bytes",
    "random_bytes",
    "truncated_mp4",
    "image_renamed_mp4",
    "audio_only",
    "frame_count_bomb",
    "resolution_bomb",
    "views_out_of_sync",
    "too_many_parts",
    "view_as_text_field",
)


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, clips: list[dict[str, Path]]
) -> dict[str, tuple[Files, int, str]]:
    return _corpus(tmp_path_factory.mktemp("corpus"), clips[0])


@pytest.mark.parametrize("case", CASES)
def test_bad_clip_is_a_4xx_with_its_code_and_the_server_stays_ready(
    server: Server, corpus: dict[str, tuple[Files, int, str]], case: str
) -> None:
    files, status, code = corpus[case]
    r = httpx.post(f"{server.url}/v1/models/{DROPOUT_MODEL}/predict", files=files, timeout=30)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert r.json()["detail"]
    assert server.healthy()


def _chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_oversized_body_is_413_while_it_streams(server: Server, chunked: bool) -> None:
    limit = int(SHARED_ENV["MPLSTM_MAX_UPLOAD_BYTES"])
    # A well-formed multipart start, so the parser reads on until the limit stops it.
    head = b'--x\r\nContent-Disposition: form-data; name="front"; filename="a.mp4"\r\n\r\n'
    body = head + np.random.default_rng(1).bytes(limit * 3)
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    content: bytes | Iterator[bytes] = _chunks(body) if chunked else body
    r = httpx.post(f"{server.url}/v1/predict", content=content, headers=headers, timeout=30)
    assert r.request.headers.get("transfer-encoding") == ("chunked" if chunked else None)
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
    assert server.healthy()


REQUESTS: dict[str, tuple[Callable[[str], httpx.Response], int, str]] = {
    "json_instead_of_multipart": (
        lambda url: httpx.post(f"{url}/v1/predict", json={"front": "x"}),
        415,
        "unsupported_media_type",
    ),
    "no_views": (
        lambda url: httpx.post(f"{url}/v1/predict", files={"top_k": (None, "3")}),
        422,
        "bad_views",
    ),
    "bad_top_k": (
        lambda url: httpx.post(f"{url}/v1/predict?top_k=0", files={"front": ("a", b"x")}),
        422,
        "invalid_request",
    ),
    "unknown_model": (
        lambda url: httpx.post(f"{url}/v1/models/nope/predict", files={"front": ("a", b"x")}),
        404,
        "model_not_found",
    ),
    "unknown_route": (lambda url: httpx.get(f"{url}/v3/nothing"), 404, "not_found"),
    "wrong_method": (lambda url: httpx.get(f"{url}/v1/predict"), 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_bad_request_is_a_4xx_in_the_error_shape(server: Server, case: str) -> None:
    send, status, code = REQUESTS[case]
    r = send(server.url)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and r.json()["error"] == code
    assert server.healthy()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib * 1024


def test_memory_stays_bounded_over_repeated_bombs_and_oversized_bodies(
    server: Server, corpus: dict[str, tuple[Files, int, str]]
) -> None:
    assert server.process is not None
    url = f"{server.url}/v1/models/{DROPOUT_MODEL}/predict"
    limit = int(SHARED_ENV["MPLSTM_MAX_UPLOAD_BYTES"])

    def round_of_bad_input() -> None:
        for case in ("frame_count_bomb", "resolution_bomb", "random_bytes"):
            files, status, _ = corpus[case]
            assert httpx.post(url, files=files, timeout=30).status_code == status
        big = {"front": ("a.mp4", np.random.default_rng(2).bytes(limit * 2), "video/mp4")}
        assert httpx.post(url, files=big, timeout=30).status_code == 413

    round_of_bad_input()  # allocator pools and imports settle in the first round
    before = _rss_bytes(server.process.pid)
    for _ in range(5):
        round_of_bad_input()
    growth = _rss_bytes(server.process.pid) - before
    # Five more rounds sent ~20 MB of bodies and asked for ~10^9 decoded pixels; a leak of
    # either would show as tens of MB at least.
    assert growth < 24 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert server.healthy()
