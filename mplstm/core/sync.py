"""Multi-view sync: the time range all views cover and the sample times shared by every view.

Each view's timestamps start at 0 (its own first frame), so views are aligned by their
own start. The common range is [0, shortest duration]; views whose durations differ by
more than a tolerance are refused rather than silently stretched.

Two ways to place the sample times (DESIGN.md §4): T times spread over the range
(`sample_times`, offline models), or a fixed rate (`fixed_rate_times`, live models,
whose utterance length is not known in advance). Either way every view takes its
nearest frame (`nearest_frames`); live sessions apply the same two functions online
(`step_time`, `nearest_frames` over the frames buffered so far).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

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


def step_time(step: int, fps: float) -> float:
    """When fixed-rate step `step` samples, from the start: the centre of its 1/fps bin."""
    return (step + 0.5) / fps


def fixed_rate_times(duration: float, fps: float) -> np.ndarray:
    """The step times at `fps` that fall inside [0, duration): (k + 0.5) / fps, at least one.

    A live session ends an utterance at its end time and samples the same steps
    (`step_time(k) < end`), so streamed and offline inference see the same frames.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    count = max(1, steps_before(duration, fps))
    return np.array([step_time(k, fps) for k in range(count)])


def steps_before(end: float, fps: float) -> int:
    """How many fixed-rate steps sample before `end` (step k counts when step_time(k) < end)."""
    count = max(0, int(np.ceil(end * fps - 0.5)))
    # Floating point: ceil can land one step off where end * fps - 0.5 is an integer.
    while count > 0 and step_time(count - 1, fps) >= end:
        count -= 1
    while step_time(count, fps) < end:
        count += 1
    return count


def nearest_frame(timestamps: Sequence[float], t: float) -> int:
    """`nearest_frames` for one time: the same rule (ties: the earlier frame), in plain
    Python, for a live session's few buffered frames (numpy's call overhead is most of a
    step's sync cost there). Tested against `nearest_frames`."""
    right = min(bisect.bisect_left(timestamps, t), len(timestamps) - 1)
    left = max(right - 1, 0)
    return right if abs(timestamps[right] - t) < abs(t - timestamps[left]) else left


def nearest_frames(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest each time (ties: the earlier frame).

    `timestamps` must be sorted. A view with fewer frames than times repeats frames.
    """
    right = np.minimum(np.searchsorted(timestamps, times), len(timestamps) - 1)
    left = np.maximum(right - 1, 0)
    take_right = np.abs(timestamps[right] - times) < np.abs(times - timestamps[left])
    return np.where(take_right, right, left)
