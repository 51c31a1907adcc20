"""Service test helpers: a server subprocess, package building, clip writing.

Packages are exported once per session from tiny untrained models (tests may import
torch to build them; the service itself never does). Servers run in a subprocess
(`python -m uvicorn --factory mplstm.service.app:app_from_env`, or `mplstm serve`) on a
free loopback port and are reached with httpx.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from live_server import Server
from tiny_models import save_tiny_checkpoint

from mplstm.core.synth.camera_failures import fail_views
from mplstm.core.synth.generate import RenderedView
from mplstm.core.video_writer import write_video

VIEWS = ("front", "side", "profile")
LABELS = ("a", "b", "c", "d")
FRAMES, SIZE = 8, 32  # the packages' T and H = W
# Models in the shared repository: "tiny" was trained with view dropout (missing views
# allowed), "tiny-full" was not.
DROPOUT_MODEL, FULL_MODEL = "tiny", "tiny-full"
# The shared server's limits: tight, so that the bomb cases stay small files.
SHARED_ENV = {
    "MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL,
    "MPLSTM_MAX_UPLOAD_BYTES": str(2_000_000),
    "MPLSTM_MAX_PARTS": "6",
    "MPLSTM_MAX_FRAMES": "100",
    "MPLSTM_MAX_PIXELS": str(200_000),
    "MPLSTM_MAX_DELAY_MS": "20",
}


def build_packages(repo: Path, work: Path) -> None:
    from mplstm.export.package import build_package

    for seed, (name, dropout) in enumerate(((DROPOUT_MODEL, 0.2), (FULL_MODEL, 0.0))):
        ckpt = save_tiny_checkpoint(
            work / f"{name}.pt", views=VIEWS, labels=LABELS, seed=seed, view_dropout=dropout
        )
        build_package(ckpt, repo / name / "1")


def write_clip(
    folder: Path,
    seed: int,
    *,
    frames: int = 20,
    fps: float = 25.0,
    failures: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Three views of one moving random texture (H.264, 48x48), one file per view.

    The texture is smooth blobs, not independent pixels: a picture with spatial
    structure, which the camera checks tell apart from a no-signal camera's snow.
    `failures` (view -> kind of `mplstm.core.synth.camera_failures`) fails cameras.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.uniform(0, 255, (12, 12)), np.ones((8, 8)))
    blur = np.ones(5) / 5
    for axis in (0, 1):
        blocks = np.apply_along_axis(np.convolve, axis, blocks, blur, mode="same")
    texture = blocks.astype(np.uint8)
    views = []
    for v, name in enumerate(VIEWS):
        # Each view looks at a different part of the texture, which drifts over time.
        shifts = (np.arange(frames) * (v + 1)) % 48
        rows = (np.arange(48)[None, :, None] + shifts[:, None, None] + 16 * v) % 96
        cols = (np.arange(48)[None, None, :] + shifts[:, None, None]) % 96
        views.append(RenderedView(name, texture[rows, cols][..., None].repeat(3, -1), fps, 0.0))
    if failures:
        views = fail_views(views, failures, rng)
    return {
        view.name: write_video(folder / f"{view.name}.mp4", view.frames, view.fps) for view in views
    }


def upload(paths: dict[str, Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx multipart files for a {view: path} clip."""
    return [(name, (p.name, p.read_bytes(), "video/mp4")) for name, p in paths.items()]


def batch_histogram(metrics_text: str, model: str) -> tuple[float, float]:
    """(batches of size 1, all batches) from the nv_inference_batch_size histogram."""

    def value(suffix: str, le: str | None = None) -> float:
        labels = f'le="{le}",model="{model}"' if le else f'model="{model}"'
        match = re.search(
            rf"^nv_inference_batch_size_{suffix}\{{{labels}\}} (\S+)$", metrics_text, re.M
        )
        return float(match.group(1)) if match else 0.0

    return value("bucket", "1.0"), value("count")


async def predict_all(url: str, clips: list[dict[str, Path]]) -> list[dict]:
    """POST every clip to /v1/predict at once; every answer must be a 200."""
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post(f"{url}/v1/predict?top_k=4", files=upload(c)) for c in clips)
        )
    assert [r.status_code for r in responses] == [200] * len(clips), [r.text for r in responses]
    return [r.json() for r in responses]


def scores_by_label(answer: dict) -> dict[str, float]:
    """label -> score of a /v1 answer."""
    return {p["label"]: p["score"] for p in answer["predictions"]}


def assert_load_shed(responses: list[httpx.Response]) -> None:
    """A burst was partly answered and partly refused with 503 queue_full + Retry-After."""
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, [r.text for r in responses]
    assert statuses.count(503) > 0 and statuses.count(200) > 0, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"] == "queue_full"
            assert int(r.headers["retry-after"]) >= 1


@contextmanager
def mplstm_serve(repo: Path, folder: Path, env: dict[str, str]) -> Iterator[Server]:
    """`mplstm serve` on `repo` with `env`, its log in `folder`, stopped at the end."""
    server = Server(repo, folder / "server.log", env, command="mplstm").start()
    try:
        yield server
    finally:
        server.stop()
