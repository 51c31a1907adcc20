"""Service settings from `MPLSTM_*` environment variables, checked once at start-up.

A bad value stops the server before it binds its port, with a message that names the
variable (`MPLSTM_MAX_BATCH: Input should be greater than 0 ...`), so a typo in a
deployment fails loudly instead of serving with a default.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mplstm.core.limits import DecodeLimits

ENV_PREFIX = "MPLSTM_"
_MIB = 2**20
log = logging.getLogger(__name__)


class BackendChoice(enum.StrEnum):
    """Which inference backend serves the models."""

    AUTO = "auto"  # native TensorRT where an engine fits this GPU, else ONNX Runtime
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class VideoInference(enum.StrEnum):
    """Where the video route runs inference (`mplstm.service.worker_inference` says why)."""

    AUTO = "auto"  # in the decode workers where the backend is ONNX Runtime on the CPU
    BATCHER = "batcher"  # the model's dynamic batcher, in the main process
    WORKERS = "workers"  # in the decode workers (ONNX Runtime on the CPU only)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class SettingsError(ValueError):
    """An `MPLSTM_*` variable with an unusable value; the message names it."""


class Settings(BaseSettings):
    """Everything the service reads from its environment (prefix `MPLSTM_`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Model repository: `<models_dir>/<name>/<version>/`, the newest version of each served.
    models_dir: Path = Path("models")
    # Served by `POST /v1/predict`.
    default_model: str = "demo-lipreading"
    backend: BackendChoice = BackendChoice.AUTO
    # "auto" (a GPU where one works, else the CPU), "cpu", "cuda" or "cuda:N".
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # Largest batch the batcher forms; a package's own max_batch caps it further.
    max_batch: int = Field(32, gt=0, le=4096)
    # How long the first request of a batch waits for others (Triton's max_queue_delay).
    max_delay_ms: float = Field(5.0, ge=0, le=10_000)
    # Requests waiting per model beyond which new ones get 503 + Retry-After.
    max_queue: int = Field(256, gt=0)
    # Deadline of one request from arrival to answer; later is 503 deadline_exceeded.
    request_timeout_s: float = Field(30.0, gt=0)
    # Decode worker processes (0: one per usable CPU: affinity, capped by a cgroup quota).
    decode_workers: int = Field(0, ge=0, le=256)
    # Where /v1 (video) requests run inference: auto = in the decode worker that decoded
    # the clip where the backend is ONNX Runtime on the CPU, else the dynamic batcher.
    video_inference: VideoInference = VideoInference.AUTO
    # ONNX Runtime intra-op threads of each model's batcher session (0: ONNX Runtime's
    # default, one per physical core, capped by a cgroup CPU quota). Decode workers that
    # infer share the usable CPUs out among themselves instead.
    intra_op_threads: int = Field(0, ge=0, le=256)
    # Whole request body, counted while it streams (chunked uploads included).
    max_upload_bytes: int = Field(256 * _MIB, gt=0)
    # Multipart parts (files and fields) per request.
    max_parts: int = Field(16, gt=0, le=1024)
    # Per-view decode limits (mplstm.core.limits.DecodeLimits), checked while decoding.
    max_view_bytes: int = Field(64 * _MIB, gt=0)
    max_frames: int = Field(3000, gt=0)
    max_duration_s: float = Field(60.0, gt=0)
    max_width: int = Field(4096, gt=0)
    max_height: int = Field(4096, gt=0)
    max_pixels: int = Field(4096 * 4096, gt=0)
    # Comma-separated keys, and/or a file with one key per line; none: auth is off.
    api_keys: str = Field("", repr=False)
    api_key_file: Path | None = None
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Uvicorn processes; each loads every model, so memory grows with it.
    workers: int = Field(1, gt=0, le=64)
    # On SIGTERM: stop accepting, then wait this long for in-flight requests.
    graceful_shutdown_s: float = Field(30.0, ge=0)

    def decode_limits(self) -> DecodeLimits:
        """The `core` decode limits these settings ask for."""
        return DecodeLimits(
            max_bytes=self.max_view_bytes,
            max_duration_s=self.max_duration_s,
            max_frames=self.max_frames,
            max_width=self.max_width,
            max_height=self.max_height,
            max_pixels=self.max_pixels,
        )

    def load_api_keys(self) -> frozenset[str]:
        """Keys from `MPLSTM_API_KEYS` and `MPLSTM_API_KEY_FILE` (blank lines and # comments skipped)."""
        keys = {k.strip() for k in self.api_keys.split(",") if k.strip()}
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text().splitlines()
            except OSError as exc:
                raise SettingsError(
                    f"{ENV_PREFIX}API_KEY_FILE: cannot read {self.api_key_file} ({exc})"
                ) from exc
            keys |= {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
        return frozenset(keys)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `overrides`); SettingsError naming each bad variable."""
    try:
        settings = Settings(**overrides)
        settings.decode_limits()
        settings.load_api_keys()
    except ValidationError as exc:
        problems = [
            f"{ENV_PREFIX}{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            f" (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise SettingsError("invalid service settings: " + "; ".join(problems)) from None
    except ValueError as exc:  # DecodeLimits' own checks
        raise SettingsError(f"invalid decode limits in {ENV_PREFIX}MAX_*: {exc}") from exc
    return settings
