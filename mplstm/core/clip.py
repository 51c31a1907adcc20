"""The `Clip`: V synchronized views as one uint8 array, the view mask, and what was seen per view."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from mplstm.core.camera_checks import ViewFailure


@dataclass(frozen=True)
class ViewInfo:
    """What decoding one view found; all zero for an absent view."""

    fps_seen: float  # (frames - 1) / timestamp span: measured, never the header's rate
    frames_decoded: int
    offset_s: float  # presentation time of the first frame on the stream's own timeline
    duration_s: float  # timestamp span plus one typical frame interval
    width: int  # source frame size, before resize and crop
    height: int
    truncated: bool  # decoding stopped on a damaged packet; the frames before it are used

    @classmethod
    def absent(cls) -> ViewInfo:
        return cls(0.0, 0, 0.0, 0.0, 0, 0, False)


@dataclass(frozen=True)
class Clip:
    """Model input for one event: frames uint8 [V, T, C, H, W], absent views all zero."""

    frames: np.ndarray  # uint8 [V, T, C, H, W]
    view_mask: np.ndarray  # bool [V]; False where a view is absent
    view_names: tuple[str, ...]
    views: tuple[ViewInfo, ...]
    timestamps: np.ndarray  # float64 [T]: sample times, seconds from each view's own start
    # Views that failed their camera check and were masked (their frames zeroed), in order.
    views_dropped: tuple[ViewFailure, ...] = ()

    def save_npz(self, path: str | Path, **extra: np.ndarray) -> Path:
        """Write the clip (arrays, names, per-view info, and any `extra` arrays) to a .npz."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            f"view_{f.name}": np.array([getattr(v, f.name) for v in self.views])
            for f in fields(ViewInfo)
        }
        with path.open("wb") as out:
            np.savez_compressed(
                out,
                frames=self.frames,
                view_mask=self.view_mask,
                view_names=np.array(self.view_names, dtype=str),
                timestamps=self.timestamps,
                dropped=np.array(
                    [[f.view, f.reason, f.detail] for f in self.views_dropped], dtype=str
                ).reshape(-1, 3),
                **info,
                **extra,
            )
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> Clip:
        """Read a clip written by `save_npz`."""
        with np.load(path, allow_pickle=False) as data:
            columns = {f.name: data[f"view_{f.name}"].tolist() for f in fields(ViewInfo)}
            views = tuple(ViewInfo(*row) for row in zip(*columns.values(), strict=True))
            return cls(
                frames=data["frames"],
                view_mask=data["view_mask"],
                view_names=tuple(data["view_names"].tolist()),
                views=views,
                timestamps=data["timestamps"],
                views_dropped=tuple(
                    ViewFailure(*row)
                    for row in (data["dropped"].tolist() if "dropped" in data else ())
                ),
            )
