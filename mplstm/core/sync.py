"""Multi-view sync: the time range all views cover and the T sample times shared by every view.

Each view's timestamps start at 0 (its own first frame), so views are aligned by their
own start. The common range is [0, shortest duration]; views whose durations differ by
more than a tolerance are refused rather than silently stretched.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mplstm.core.errors import ViewsOutOfSyncError


def common_duration(durations: Mapping[str, float], tolerance_s: float) -> float:
    """The duration every view covers; ViewsOutOfSyncError if they differ by more than tolerance_s."""
    if not durations:
        raise ValueError("common_duration needs at least one view")
    shortest = min(durations, key=durations.__getitem__)
    longest = max(durations, key=durations.__getitem__)
    spread = durations[longest] - durations[shortest]
    if spread > tolerance_s:
        listing = ", ".join(f"{name} {d:.2f} s" for name, d in durations.items())
        raise ViewsOutOfSyncError(
            f"views last {listing}: {longest!r} and {shortest!r} differ by {spread:.2f} s, more "
            f"than the {tolerance_s:g} s tolerance; trim every view to the same event"
        )
    return durations[shortest]


def sample_times(duration: float, count: int) -> np.ndarray:
    """`count` times spread evenly over [0, duration): the centres of equal bins."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return (np.arange(count) + 0.5) * (duration / count)


def nearest_frames(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest each time (ties: the earlier frame).

    `timestamps` must be sorted. A view with fewer frames than times repeats frames.
    """
    right = np.minimum(np.searchsorted(timestamps, times), len(timestamps) - 1)
    left = np.maximum(right - 1, 0)
    take_right = np.abs(timestamps[right] - times) < np.abs(times - timestamps[left])
    return np.where(take_right, right, left)
