"""Camera checks: a failed camera told apart from a working one by its frames (DESIGN.md §4).

In a multi-camera rig one camera fails at a time: unplugged or covered (``black``), a
uniform "no input" screen (``blank``), stopped on its last frame (``frozen``), showing
noise or a signal generator's test pattern (``no_signal``), or wired twice so that two
inputs carry the same stream (``duplicate``). `check_views` finds these on the frames a
model would get, uint8 [V, N, C, H, W] (the T sampled frames of `load_clip`, or a window
of a live stream), from a few statistics per view (`ViewStats`), each compared with a
threshold (`CameraThresholds`) set from measurement: ``bench/camera_checks.py`` measures
every statistic on the example clips, on synthetic test sets and on generated failures
(`mplstm.core.synth.camera_failures`), and docs/benchmarks.md records the margins.

The statistics are computed on grey levels (0-255; RGB averaged), on frames subsampled
to about 32 pixels a side, so that the checks cost little next to decoding (their share
of `load_clip`'s time is in docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REASONS: tuple[str, ...] = ("black", "blank", "no_signal", "frozen", "duplicate")
# Statistics are taken on frames at most about this many pixels a side (a stride).
_STATS_SIDE = 32


@dataclass(frozen=True)
class CameraThresholds:
    """Where a statistic of `ViewStats` turns a view into a failed camera (grey levels 0-255).

    The defaults sit between the worst good view and the most borderline failure that
    bench/camera_checks.py measured (docs/benchmarks.md, "Camera checks").
    """

    # Spatial standard deviation under which a view is blank: no picture, one level.
    blank_contrast: float = 6.0
    # Mean level under which a blank view is black (unplugged, lens cap).
    black_level: float = 32.0
    # Correlation of neighbouring pixels under which a frame has no spatial structure...
    snow_structure: float = 0.3
    # ...and of consecutive frames under which it changes completely every frame: snow.
    snow_coherence: float = 0.3
    # Median RMS difference of consecutive frames under which a view is still.
    still_motion: float = 0.5
    # The same, from which another view counts as moving (a still view is frozen only then).
    moving_motion: float = 1.0
    # Share of equal neighbouring pixels (along rows or columns) from which a still view
    # is a test pattern (flat colour bars) rather than a camera's picture.
    pattern_flatness: float = 0.76
    # RMS difference between two views' frames under which they are one stream.
    duplicate_difference: float = 4.0


DEFAULT_THRESHOLDS = CameraThresholds()


@dataclass(frozen=True)
class ViewStats:
    """What the checks measure on one view's frames (grey levels 0-255; NaN: not measurable)."""

    level: float  # mean grey level
    contrast: float  # median over frames of the spatial standard deviation
    motion: float  # median over consecutive distinct frames of the RMS difference
    structure: float  # median over frames of the correlation of horizontal neighbours
    coherence: float  # median over consecutive distinct frames of their correlation
    flatness: float  # share of neighbouring pixels that are equal, along rows or columns


@dataclass(frozen=True)
class ViewFailure:
    """A view that failed its camera check: which, why (one of REASONS), and what was seen."""

    view: str
    reason: str
    detail: str

    def describe(self) -> str:
        """The failure as error messages and logs name it: view 'front': black (...)."""
        return f"view {self.view!r}: {self.reason} ({self.detail})"


def view_stats(
    frames: np.ndarray,
    view_mask: np.ndarray,
    repeats: np.ndarray | None = None,
    magnification: Sequence[float] | np.ndarray | None = None,
) -> list[ViewStats | None]:
    """`ViewStats` of each present view of uint8 frames [V, N, C, H, W] (None where absent).

    `repeats` (bool [V, N]) marks frames that repeat the previous one because the source
    had fewer frames than samples; they do not count as stillness. `magnification` (per
    view, frame pixels per source pixel) says where a small source was scaled up: its
    neighbouring pixels are interpolated, so structure is measured further apart there.
    """
    measured = _Measured(frames, repeats, magnification)
    return measured.stats(view_mask, flatness_below=float("inf"))


class _Measured:
    """Per-frame moments of every view, from which every statistic follows.

    One pass for the means and three products of the centred frames (variance, horizontal
    neighbours, consecutive frames): the root-mean-square difference of two frames is
    sqrt(var_a + var_b - 2 cov_ab + (mean_a - mean_b)^2), so no difference image is formed.
    """

    def __init__(
        self,
        frames: np.ndarray,
        repeats: np.ndarray | None,
        magnification: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        self.frames = frames
        gray = _gray(frames)  # float32 [V, N, h, w]
        self.mean = gray.mean(axis=(2, 3))
        gray -= self.mean[:, :, None, None]
        self.centred = gray
        size = gray.shape[2] * gray.shape[3]
        self.var = np.einsum("vnij,vnij->vn", self.centred, self.centred) / size
        safe = np.maximum(self.var, 1e-6)
        self.structure = self._structure(safe, _lags(frames, magnification))
        lagged = np.einsum("vnij,vnij->vn", self.centred[:, 1:], self.centred[:, :-1]) / size
        self.coherence = lagged / np.sqrt(safe[:, 1:] * safe[:, :-1])
        step = np.square(np.diff(self.mean, axis=1))
        self.motion = np.sqrt(np.maximum(self.var[:, 1:] + self.var[:, :-1] - 2 * lagged + step, 0))
        self.moved = np.ones(self.motion.shape, bool)
        if repeats is not None:
            self.moved &= ~np.asarray(repeats, bool)[:, 1:]

    def _structure(self, var: np.ndarray, lags: np.ndarray) -> np.ndarray:
        """Correlation of pixels `lags[v]` apart along rows, per view and frame [V, N]."""
        height, width = self.centred.shape[2:]
        out = np.empty(var.shape, np.float32)
        for lag in np.unique(lags):
            lag = int(min(lag, width - 1)) or 1
            views = lags == lag
            centred = self.centred if views.all() else self.centred[views]
            products = np.einsum("vnij,vnij->vn", centred[..., lag:], centred[..., :-lag])
            out[views] = products / (height * max(width - lag, 1)) / var[views]
        return out

    def stats(self, view_mask: np.ndarray, flatness_below: float) -> list[ViewStats | None]:
        """Each present view's `ViewStats`; flatness only where motion < `flatness_below`."""
        contrast = np.median(np.sqrt(self.var), axis=1)
        structure = np.median(self.structure, axis=1)
        motion = _medians(self.motion, self.moved)
        coherence = _medians(self.coherence, self.moved)
        level = self.mean.mean(axis=1)
        out: list[ViewStats | None] = []
        for v, present in enumerate(view_mask):
            if not present:
                out.append(None)
                continue
            still = motion[v] < flatness_below
            out.append(
                ViewStats(
                    level=float(level[v]),
                    contrast=float(contrast[v]),
                    motion=float(motion[v]),
                    structure=float(structure[v]),
                    coherence=float(coherence[v]),
                    flatness=float(_flatness(self.frames[v])) if still else float("nan"),
                )
            )
        return out

    def difference(self, a: int, b: int) -> float:
        """Root-mean-square difference between views a and b, frame by frame."""
        size = self.centred.shape[2] * self.centred.shape[3]
        cov = np.einsum("nij,nij->n", self.centred[a], self.centred[b]) / size
        step = np.square(self.mean[a] - self.mean[b])
        return float(np.sqrt(np.maximum(self.var[a] + self.var[b] - 2 * cov + step, 0).mean()))


def view_differences(frames: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
    """RMS difference between every two present views' frames [V, V] (NaN where absent):
    the statistic of the duplicate check, frame by frame at the same sample times."""
    measured = _Measured(frames, None)
    views = len(view_mask)
    out = np.full((views, views), np.nan)
    present = [v for v in range(views) if view_mask[v]]
    for a, b in itertools.combinations(present, 2):
        out[a, b] = out[b, a] = measured.difference(a, b)
    for v in present:
        out[v, v] = 0.0
    return out


def check_views(
    frames: np.ndarray,
    view_mask: np.ndarray,
    view_names: Sequence[str],
    repeats: np.ndarray | None = None,
    magnification: Sequence[float] | np.ndarray | None = None,
    thresholds: CameraThresholds = DEFAULT_THRESHOLDS,
) -> tuple[ViewFailure, ...]:
    """The present views of uint8 frames [V, N, C, H, W] that failed, in view order.

    Each view is judged alone (black, blank, no_signal), then against the others (frozen:
    still while another view moves; duplicate: the same frames as an earlier good view).
    `repeats` and `magnification` as in `view_stats`. Works on any number of frames
    N >= 1; the checks that compare consecutive frames need two distinct ones.
    """
    measured = _Measured(frames, repeats, magnification)
    # Only a still view can be a test pattern, so flatness is measured for those alone.
    stats = measured.stats(view_mask, flatness_below=thresholds.still_motion)
    failures: dict[int, ViewFailure] = {}
    for v, s in enumerate(stats):
        if s is not None and (failure := _alone(view_names[v], s, thresholds)) is not None:
            failures[v] = failure
    moving = {
        v: s.motion
        for v, s in enumerate(stats)
        if s is not None and v not in failures and s.motion >= thresholds.moving_motion
    }
    for v, s in enumerate(stats):
        if s is None or v in failures or not s.motion < thresholds.still_motion or not moving:
            continue
        other = max(moving, key=moving.__getitem__)
        failures[v] = ViewFailure(
            view_names[v],
            "frozen",
            f"the picture does not change (frame difference {s.motion:.2f}) while "
            f"{view_names[other]!r} moves ({moving[other]:.2f})",
        )
    good = [v for v, s in enumerate(stats) if s is not None and v not in failures]
    for v, source, difference in _duplicates(measured, good, thresholds):
        failures[v] = ViewFailure(
            view_names[v],
            "duplicate",
            f"the same frames as {view_names[source]!r} (difference {difference:.2f}): "
            "one stream wired to two inputs",
        )
    return tuple(failures[v] for v in sorted(failures))


def _alone(name: str, s: ViewStats, t: CameraThresholds) -> ViewFailure | None:
    """The failure a view shows by itself, if any."""
    if s.contrast < t.blank_contrast:
        reason = "black" if s.level < t.black_level else "blank"
        what = "camera unplugged or covered" if reason == "black" else "one uniform picture"
        return ViewFailure(
            name, reason, f"mean level {s.level:.0f}/255, contrast {s.contrast:.1f}: {what}"
        )
    # A single frame has no coherence to measure: its lack of structure decides alone.
    if s.structure < t.snow_structure and not s.coherence >= t.snow_coherence:
        return ViewFailure(
            name,
            "no_signal",
            f"noise without a picture (neighbour correlation {s.structure:.2f}, "
            f"frame-to-frame {s.coherence:.2f})",
        )
    if s.motion < t.still_motion and s.flatness >= t.pattern_flatness:
        return ViewFailure(
            name,
            "no_signal",
            f"a still test pattern ({s.flatness:.0%} flat, frame difference {s.motion:.2f})",
        )
    return None


def _duplicates(
    measured: _Measured, good: list[int], t: CameraThresholds
) -> list[tuple[int, int, float]]:
    """(view, the earlier view it copies, RMS difference) for each duplicated view in `good`."""
    found: list[tuple[int, int, float]] = []
    if len(good) < 2:
        return found
    # The RMS difference of two views is at least that of their mean levels: a cheap test
    # that rules most pairs out before their frames are compared.
    means = measured.mean[good]
    apart = np.abs(means[:, None] - means[None]).mean(axis=2) >= t.duplicate_difference
    copies: set[int] = set()
    for b, j in enumerate(good):
        for a, i in enumerate(good[:b]):
            if i in copies or apart[a, b]:
                continue
            difference = measured.difference(i, j)
            if difference < t.duplicate_difference:
                found.append((j, i, difference))
                copies.add(j)
                break
    return found


def _step(frames: np.ndarray) -> int:
    """The stride that brings frames to about _STATS_SIDE pixels a side."""
    return max(1, min(frames.shape[-2:]) // _STATS_SIDE)


def _lags(frames: np.ndarray, magnification: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Per view, how far apart (in strided pixels) neighbours are taken for `structure`.

    Neighbours of a source scaled up by f are interpolated from the same source pixels:
    they are taken a source pixel and one more apart, so that snow stays structureless.
    """
    views = frames.shape[0]
    if magnification is None:
        return np.ones(views, int)
    factor = np.asarray(magnification, np.float64)
    upscaled = np.ceil(factor / _step(frames) - 1e-9).astype(int) + 1
    return np.where(factor > 1, upscaled, 1)


def _gray(frames: np.ndarray) -> np.ndarray:
    """float32 grey levels [V, N, h, w] of uint8 [V, N, C, H, W], subsampled to ~_STATS_SIDE."""
    step = _step(frames)
    picked = frames[..., ::step, ::step]
    if picked.shape[2] == 1:
        # A contiguous uint8 copy first: casting a strided view is slower than both steps.
        return np.ascontiguousarray(picked[:, :, 0]).astype(np.float32)
    return picked.mean(axis=2, dtype=np.float32)


def _flatness(frames: np.ndarray) -> float:
    """The larger share of equal neighbours along rows or along columns of uint8 [N, C, H, W]."""
    step = max(1, min(frames.shape[-2:]) // _STATS_SIDE)  # [N, C, H, W]: as _step does
    picked = frames[:, :1, ::step, ::step]  # one channel: flat areas are flat in each
    rows = np.count_nonzero(picked[..., 1:] == picked[..., :-1]) / picked[..., 1:].size
    columns = np.count_nonzero(picked[..., 1:, :] == picked[..., :-1, :]) / picked[..., 1:, :].size
    return max(rows, columns)


def _medians(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row, the median of the kept values (NaN where none is kept)."""
    if keep.all() and values.shape[1]:
        return np.median(values, axis=1)
    return np.array(
        [np.median(row[k]) if k.any() else np.nan for row, k in zip(values, keep, strict=True)]
    )
