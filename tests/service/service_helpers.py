"""Service test helpers: a server subprocess, package building, clip writing.

Packages are exported once per session from tiny untrained models (tests may import
torch to build them; the service itself never does). Servers run in a subprocess
(`python -m uvicorn --factory mplstm.service.app:app_from_env`, or `mplstm serve`) on a
free loopback port and are reached with httpx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_models import save_tiny_checkpoint

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


def write_clip(folder: Path, seed: int, *, frames: int = 20, fps: float = 25.0) -> dict[str, Path]:
    """Three views of one moving random texture (H.264, 48x48), one file per view."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    paths = {}
    for v, name in enumerate(VIEWS):
        # Each view looks at a different part of the texture, which drifts over time.
        shifts = (np.arange(frames) * (v + 1)) % 48
        rows = (np.arange(48)[None, :, None] + shifts[:, None, None] + 16 * v) % 96
        cols = (np.arange(48)[None, None, :] + shifts[:, None, None]) % 96
        paths[name] = write_video(folder / f"{name}.mp4", texture[rows, cols], fps)
    return paths


def upload(paths: dict[str, Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx multipart files for a {view: path} clip."""
    return [(name, (p.name, p.read_bytes(), "video/mp4")) for name, p in paths.items()]
