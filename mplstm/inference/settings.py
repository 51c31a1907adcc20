"""The `MPLSTM_*` variables every user of inference reads: backend, device, decode limits,
camera checks.

The service's settings extend these with its own (ports, keys, batching); the batch
scorer reads only these, so a service-only variable (say an unreadable
`MPLSTM_API_KEY_FILE`) cannot stop a batch job. A bad value fails fast with a message
that names the variable (`MPLSTM_MAX_FRAMES: Input should be greater than 0 ...`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mplstm.core.limits import DecodeLimits
from mplstm.inference.options import DEVICE_PATTERN, BackendChoice, BackendOptions

ENV_PREFIX = "MPLSTM_"
_MIB = 2**20
S = TypeVar("S", bound="InferenceSettings")


class SettingsError(ValueError):
    """An `MPLSTM_*` variable with an unusable value; the message names it."""


class InferenceSettings(BaseSettings):
    """Backend choice and decode limits (prefix `MPLSTM_`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    backend: BackendChoice = BackendChoice.AUTO
    # "auto" (a GPU where one works, else the CPU), "cpu", "cuda" or "cuda:N".
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    # ONNX Runtime intra-op threads of a main-process session (0: ONNX Runtime's default,
    # one per physical core, capped by a cgroup CPU quota). Workers that infer share the
    # usable CPUs out among themselves instead.
    intra_op_threads: int = Field(0, ge=0, le=256)
    # Comma-separated ONNX Runtime execution providers, best first (empty: from the device).
    ort_providers: str = ""
    # Per-view decode limits (mplstm.core.limits.DecodeLimits), checked while decoding.
    max_view_bytes: int = Field(64 * _MIB, gt=0)
    max_frames: int = Field(3000, gt=0)
    max_duration_s: float = Field(60.0, gt=0)
    max_width: int = Field(4096, gt=0)
    max_height: int = Field(4096, gt=0)
    max_pixels: int = Field(4096 * 4096, gt=0)
    # Check every camera of a video clip (black, blank, frozen, no signal, duplicate) and
    # mask or refuse a failed one (mplstm.core.camera_checks).
    camera_checks: bool = True

    def backend_options(self) -> BackendOptions:
        """The backend these settings ask for."""
        providers = tuple(p.strip() for p in self.ort_providers.split(",") if p.strip())
        return BackendOptions(self.backend, self.device, self.intra_op_threads, providers)

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

    def check(self) -> None:
        """Raise ValueError for values that are valid one by one but not together."""
        self.decode_limits()


def load_settings_of(cls: type[S], **overrides: Any) -> S:
    """`cls` from the environment (and `overrides`); SettingsError naming each bad variable."""
    try:
        settings = cls(**overrides)
        settings.check()
    except ValidationError as exc:
        problems = [
            f"{ENV_PREFIX}{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            f" (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except SettingsError:
        raise
    except ValueError as exc:  # DecodeLimits' own checks
        raise SettingsError(f"invalid decode limits in {ENV_PREFIX}MAX_*: {exc}") from exc
    return settings


def load_inference_settings(**overrides: Any) -> InferenceSettings:
    """What the batch scorer reads: backend and decode limits only."""
    return load_settings_of(InferenceSettings, **overrides)
