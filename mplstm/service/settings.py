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

from pydantic import Field, field_validator

from mplstm.inference.options import Placement
from mplstm.inference.settings import (
    ENV_PREFIX,
    InferenceSettings,
    SettingsError,
    load_settings_of,
)
from mplstm.service.gallery.store import DEFAULT_URL as GALLERY_URL
from mplstm.service.gallery.store import SCHEMES as GALLERY_SCHEMES
from mplstm.service.stream_settings import StreamSettings

__all__ = ["ENV_PREFIX", "LogFormat", "Settings", "SettingsError", "load_settings"]

log = logging.getLogger(__name__)
_MIB = 2**20


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(StreamSettings, InferenceSettings):
    """Everything the service reads from its environment (prefix `MPLSTM_`).

    The backend, device and decode limits are `InferenceSettings`, shared with the scorer;
    live sessions' limits are `StreamSettings`.
    """

    # Model repository: `<models_dir>/<name>/<version>/`, the newest version of each served.
    models_dir: Path = Path("models")
    # Served by `POST /v1/predict`.
    default_model: str = "demo-lipreading"
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
    # Where /v1 (video) requests run inference (`Placement`): auto = in the decode worker
    # that decoded the clip where the backend computes on the CPU, else main (the dynamic
    # batcher). /v2 always uses the batcher. "batcher" is the old name of main.
    video_inference: Placement = Placement.AUTO
    # Whole request body, counted while it streams (chunked uploads included).
    max_upload_bytes: int = Field(256 * _MIB, gt=0)
    # Multipart parts (files and fields) per request.
    max_parts: int = Field(16, gt=0, le=1024)
    # Comma-separated keys, and/or a file with one key per line; none: auth is off.
    api_keys: str = Field("", repr=False)
    api_key_file: Path | None = None
    # Keys with the admin scope (comma-separated): enrol in and delete from a gallery, and
    # everything a normal key may do.
    admin_api_keys: str = Field("", repr=False)
    # The identity gallery's database: sqlite:///PATH (a file, the default) or
    # postgresql://USER:PASSWORD@HOST:PORT/DB for several replicas (mplstm.service.gallery).
    gallery_url: str = Field(GALLERY_URL, repr=False)
    # False-accept rate whose threshold (from the package) identify and verify apply
    # unless a request asks for another; it must be one the package lists.
    identity_far: float = Field(0.01, gt=0, lt=1)
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # The Open Inference Protocol over gRPC on the same host (Triton's 8001); 0: off.
    grpc_port: int = Field(8001, ge=0, le=65535)
    # Schedule-policy priority levels of every batcher (Triton's priority_levels): a
    # request's `priority` 1 is served first, `priority_levels` last, 0 = the default.
    priority_levels: int = Field(3, ge=1, le=16)
    default_priority_level: int = Field(2, ge=1, le=16)
    # Uvicorn processes; each loads every model, so memory grows with it.
    workers: int = Field(1, gt=0, le=64)
    # On SIGTERM: stop accepting, then wait this long for in-flight requests.
    graceful_shutdown_s: float = Field(30.0, ge=0)
    # Refuse (422 too_few_cameras) a video clip whose usable views are expected, from the
    # package's view-subset table, to be less accurate than this (0..1). Unset: off.
    min_expected_accuracy: float | None = Field(None, ge=0, le=1)
    # -- Clients (docs/service.md, "Limits and hostile clients"). Open connections per
    # process, kept below the open-file limit (raised to its hard limit at start).
    max_connections: int = Field(4096, gt=0)
    # Request line and headers together, and the header count: nginx's 4 x 8 KiB, Apache's 100.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=_MIB)
    max_headers: int = Field(100, gt=0, le=10_000)
    # The request head must arrive within this of its first byte (or of the connection).
    header_timeout_s: float = Field(10.0, gt=0)
    # The body must arrive within this once the route reads it and, after its first 5 s,
    # on average at least min_upload_bytes_per_s fast, and fast enough for its declared
    # size to arrive within upload_timeout_s; time the server does not read does not count.
    upload_timeout_s: float = Field(60.0, gt=0)
    min_upload_bytes_per_s: int = Field(1024, ge=0)
    # An idle keep-alive connection is closed after this.
    keepalive_timeout_s: float = Field(5.0, gt=0)
    # A /v2 JSON body, or the JSON header of a binary one: parsed on the event loop.
    max_json_bytes: int = Field(8 * _MIB, gt=0)
    # Request bodies held by requests in flight, all together: the next one waits (up to
    # request_timeout_s) for room, then 503 server_busy.
    max_inflight_bytes: int = Field(512 * _MIB, gt=0)

    @field_validator("video_inference", mode="before")
    @classmethod
    def _old_placement_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "batcher":
            log.warning("MPLSTM_VIDEO_INFERENCE=batcher is now called main; serving it as main")
            return Placement.MAIN
        return value

    def load_api_keys(self) -> frozenset[str]:
        """Keys from `MPLSTM_API_KEYS` and `MPLSTM_API_KEY_FILE` (blank lines and # comments skipped).

        Fails closed: a variable that is set but yields no key (`" , "`, a file of comments)
        is a SettingsError naming it, never "auth off". Only both unset (or empty) is.
        """
        keys = {k.strip() for k in self.api_keys.split(",") if k.strip()}
        if self.api_keys and not keys:
            raise SettingsError(
                f"{ENV_PREFIX}API_KEYS is set but holds no key ({self.api_keys!r}); "
                "give comma-separated keys, or unset it to run without authentication"
            )
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text().splitlines()
            except OSError as exc:
                raise SettingsError(
                    f"{ENV_PREFIX}API_KEY_FILE: cannot read {self.api_key_file} ({exc})"
                ) from exc
            in_file = {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
            if not in_file:
                raise SettingsError(
                    f"{ENV_PREFIX}API_KEY_FILE: {self.api_key_file} holds no key (only blank "
                    "lines or # comments); put one key per line, or unset the variable to run "
                    "without authentication"
                )
            keys |= in_file
        return frozenset(keys)

    def load_admin_keys(self) -> frozenset[str]:
        """Keys with the admin scope, from `MPLSTM_ADMIN_API_KEYS`."""
        return frozenset(k.strip() for k in self.admin_api_keys.split(",") if k.strip())

    def check(self) -> None:
        super().check()
        self.load_api_keys()
        if self.default_priority_level > self.priority_levels:
            raise SettingsError(
                f"{ENV_PREFIX}DEFAULT_PRIORITY_LEVEL {self.default_priority_level} is above "
                f"{ENV_PREFIX}PRIORITY_LEVELS {self.priority_levels}"
            )
        if not self.gallery_url.startswith(GALLERY_SCHEMES):
            raise SettingsError(
                f"{ENV_PREFIX}GALLERY_URL: use sqlite:///PATH or postgresql://USER:PASSWORD@"
                f"HOST:PORT/DB, got {self.gallery_url.split(':', 1)[0]}:..."
            )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `overrides`); SettingsError naming each bad variable."""
    return load_settings_of(Settings, **overrides)
