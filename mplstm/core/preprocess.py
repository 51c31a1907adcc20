"""Video files in, model input out: the one preprocessing path of training, serving and scoring.

`load_clip` decodes every view (sequentially: callers parallelise across clips),
syncs them (`core.sync`) and picks the same sample times in every view, giving a
uint8 [V, T, C, H, W] `Clip`: T times spread over the clip, or (live models, `fps`) one
time every 1/fps seconds, so that T follows the clip's length. With `camera_checks` on,
the sampled frames of every view are checked (`core.camera_checks`): a failed view is
masked where the model allows missing views, and refused (`CameraFailedError`) where it
does not. `normalize` turns frames into the model's float input.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mplstm.core.camera_checks import ViewFailure, check_views
from mplstm.core.clip import Clip, ViewInfo
from mplstm.core.decode import DecodedView, Source, decode_view
from mplstm.core.errors import CameraFailedError, ViewNamesError
from mplstm.core.limits import DecodeLimits
from mplstm.core.sync import common_duration, fixed_rate_times, nearest_frames, sample_times

# A view's source, or None for an absent view (camera failed).
ViewSource = Source | None
Views = Mapping[str, ViewSource] | Sequence[ViewSource]


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its clips; a model package's manifest fills it in."""

    # T, sampled evenly over the time range all views cover; with `fps`, the nominal T
    # (warm-up, export tracing, a sliding window of that many steps).
    frames: int = 20
    height: int = 88
    width: int = 88
    channels: int = 1  # 1 grayscale, 3 RGB
    # Applied by `normalize` to frames / 255; one value, or one per channel.
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    # Expected view names in model order; None takes the names (or order) the caller gives.
    view_names: tuple[str, ...] | None = None
    # Whether a view may be absent (a model trained with view dropout); absent views are zeros.
    allow_missing_views: bool = False
    # Largest difference in duration between views; more means they did not record one event.
    sync_tolerance_s: float = 0.2
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    # Check every view's sampled frames for a failed camera (black, blank, frozen, no
    # signal, duplicate). Off here; the service, the scorer and training turn it on.
    camera_checks: bool = False
    # Live models: one sample every 1/fps s (`core.sync.fixed_rate_times`), as many as the
    # clip lasts, in place of `frames` spread over it. None: spread (offline models).
    fps: float | None = None

    @property
    def sampling(self) -> str:
        """ "fps" (a fixed rate: live models) or "frames" (T spread over the clip)."""
        return "frames" if self.fps is None else "fps"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.height < 1 or self.width < 1:
            raise ValueError(
                f"frames, height, width must be >= 1, got {self.frames}, {self.height}, {self.width}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {self.channels}")
        for name in ("mean", "std"):
            values = np.atleast_1d(getattr(self, name))
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if np.any(np.atleast_1d(self.std) == 0):
            raise ValueError("std must be non-zero")
        if self.view_names is not None and len(set(self.view_names)) != len(self.view_names):
            raise ValueError(f"view_names has duplicates: {self.view_names}")
        if self.sync_tolerance_s < 0:
            raise ValueError(f"sync_tolerance_s must be >= 0, got {self.sync_tolerance_s}")
        if self.fps is not None and not 0 < self.fps <= 240:
            raise ValueError(f"fps must lie in (0, 240], got {self.fps}")

    def to_dict(self) -> dict:
        """Plain JSON/TOML-friendly values (checkpoints, package manifests, cache keys)."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std", "view_names"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> PreprocessConfig:
        """Inverse of `to_dict`."""
        values = dict(values)
        values["limits"] = DecodeLimits(**values.get("limits", {}))
        for key in ("mean", "std", "view_names"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def load_clip(views: Views, config: PreprocessConfig) -> Clip:
    """Decode, sync and sample the views of one clip into a uint8 [V, T, C, H, W] `Clip`.

    `views` maps view name -> source (path, bytes, binary file object, or None when
    absent), or lists sources in the model's view order. With `config.camera_checks`,
    a view that fails its camera check is masked like an absent one and listed in
    `Clip.views_dropped`; CameraFailedError where the model needs every view, or where
    no view is left.
    """
    names, sources = _resolve_views(views, config)
    decoded: dict[str, DecodedView] = {
        name: decode_view(
            source,
            height=config.height,
            width=config.width,
            channels=config.channels,
            limits=config.limits,
            view=name,
        )
        for name, source in zip(names, sources, strict=True)
        if source is not None
    }
    duration = common_duration(
        {name: view.info.duration_s for name, view in decoded.items()}, config.sync_tolerance_s
    )
    times = (
        sample_times(duration, config.frames)
        if config.fps is None
        else (fixed_rate_times(duration, config.fps))
    )
    out = np.zeros((len(names), len(times), config.channels, config.height, config.width), np.uint8)
    # Samples that repeat the previous sample's frame (a view with fewer frames than T).
    repeats = np.zeros((len(names), len(times)), bool)
    infos = []
    for v, name in enumerate(names):
        view = decoded.get(name)
        if view is None:
            infos.append(ViewInfo.absent())
            continue
        picked = nearest_frames(view.timestamps, times)
        out[v] = view.take(picked)
        repeats[v, 1:] = picked[1:] == picked[:-1]
        infos.append(view.info)
    mask = np.array([name in decoded for name in names])
    dropped: tuple[ViewFailure, ...] = ()
    if config.camera_checks:
        # Frame pixels per source pixel: above 1 where a small source was scaled up.
        magnification = [
            max(config.height / info.height, config.width / info.width) if info.height else 1.0
            for info in infos
        ]
        dropped = _drop_failed_views(out, mask, names, repeats, magnification, config)
    return Clip(out, mask, tuple(names), tuple(infos), times, dropped)


def _drop_failed_views(
    frames: np.ndarray,
    mask: np.ndarray,
    names: Sequence[str],
    repeats: np.ndarray,
    magnification: Sequence[float],
    config: PreprocessConfig,
) -> tuple[ViewFailure, ...]:
    """Mask (and zero) the views that fail their camera check; refuse where that cannot be."""
    failures = check_views(frames, mask, names, repeats, magnification)
    if not failures:
        return failures
    listing = "; ".join(f.describe() for f in failures)
    if not config.allow_missing_views:
        raise CameraFailedError(
            f"camera check failed: {listing}. This model needs every view of {list(names)}: "
            "fix the camera, or turn the camera checks off for this clip",
            failures,
        )
    if len(failures) == int(mask.sum()):
        raise CameraFailedError(
            f"every view failed its camera check: {listing}. Nothing is left to predict from",
            failures,
        )
    for failure in failures:
        v = names.index(failure.view)
        frames[v] = 0
        mask[v] = False
    return failures


def normalize(
    frames: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float]
) -> np.ndarray:
    """uint8 frames [..., C, H, W] -> float32 (frames / 255 - mean) / std, per channel."""
    mean_c = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std_c = np.asarray(std, np.float32).reshape(-1, 1, 1)
    out = frames.astype(np.float32)
    out *= np.float32(1 / 255)
    out -= mean_c
    out /= std_c
    return out


def named_views(pairs: Iterable[tuple[str, ViewSource]]) -> dict[str, ViewSource]:
    """(name, source) pairs (e.g. multipart form fields) -> a mapping; duplicate names refused."""
    views: dict[str, ViewSource] = {}
    duplicates = []
    for name, source in pairs:
        if name in views:
            duplicates.append(name)
        views[name] = source
    if duplicates:
        raise ViewNamesError(f"view names given more than once: {sorted(set(duplicates))}")
    return views


def _resolve_views(views: Views, config: PreprocessConfig) -> tuple[list[str], list[ViewSource]]:
    """Names in model order and their sources (None = absent), checked against the config."""
    expected = config.view_names
    if isinstance(views, str | bytes | bytearray | memoryview | os.PathLike):
        raise TypeError("views is a mapping or a list of sources, even for one view")
    if isinstance(views, Mapping):
        given = list(views)
        if expected is None:
            names = given
        else:
            unknown = [name for name in given if name not in expected]
            if unknown:
                raise ViewNamesError(
                    f"unknown view names {unknown}; this model takes {list(expected)}"
                )
            names = list(expected)
        sources = [views.get(name) for name in names]
    else:
        sources = list(views)
        names = (
            list(expected) if expected is not None else [f"view{i}" for i in range(len(sources))]
        )
        if len(sources) != len(names):
            raise ViewNamesError(
                f"{len(sources)} views given; this model takes {len(names)}: {names}"
            )
    if not names:
        raise ViewNamesError("no views given")
    absent = [name for name, source in zip(names, sources, strict=True) if source is None]
    if len(absent) == len(names):
        raise ViewNamesError(f"every view is absent ({names}); send at least one video")
    if absent and not config.allow_missing_views:
        raise ViewNamesError(f"views {absent} are missing; this model needs every view of {names}")
    return names, sources
