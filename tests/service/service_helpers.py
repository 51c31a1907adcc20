"""Service test helpers: a server subprocess, package building, clip writing.

Packages are exported once per session from tiny untrained models (tests may import
torch to build them; the service itself never does). Servers run in a subprocess
(`python -m uvicorn --factory mplstm.service.app:app_from_env`, or `mplstm serve`) on a
free loopback port and are reached with httpx.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

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
_START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A service subprocess on a loopback port; its stdout/stderr go to `log_path`."""

    models_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    command: str = "uvicorn"  # or "mplstm" (the `mplstm serve` entry point)
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> Server:
        self.port = free_port()
        # Only this server's MPLSTM_* settings, none inherited from the test runner.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPLSTM_")}
        env.update({"MPLSTM_MODELS_DIR": str(self.models_dir), **self.env})
        if self.command == "mplstm":
            args = [sys.executable, "-m", "mplstm", "serve", "--port", str(self.port)]
        else:
            args = [
                sys.executable, "-m", "uvicorn", "--factory", "mplstm.service.app:app_from_env",
                "--host", "127.0.0.1", "--port", str(self.port),
            ]  # fmt: skip
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.wait("/v2/health/ready" if wait_ready else "/v2/health/live")
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not up in {_START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def healthy(self) -> bool:
        return httpx.get(self.url + "/v2/health/ready", timeout=5).status_code == 200


def build_packages(repo: Path, work: Path) -> None:
    import torch

    from mplstm.core.preprocess import PreprocessConfig
    from mplstm.export.package import build_package
    from mplstm.training.checkpoint import CheckpointMeta, model_config_dict, save_checkpoint
    from mplstm.training.models import get_model

    for seed, (name, dropout) in enumerate(((DROPOUT_MODEL, 0.2), (FULL_MODEL, 0.0))):
        torch.manual_seed(seed)
        model = get_model(
            "mplstm",
            num_classes=len(LABELS),
            num_views=len(VIEWS),
            widths=(8, 8, 16),
            hidden_size=16,
            view_dropout=dropout,
        )
        meta = CheckpointMeta(
            model_name="mplstm",
            model_config=model_config_dict(model),
            labels=LABELS,
            view_names=VIEWS,
            preprocess=PreprocessConfig(frames=FRAMES, height=SIZE, width=SIZE, channels=1),
            task="lipreading",
        )
        ckpt = save_checkpoint(work / f"{name}.pt", model, meta)
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
