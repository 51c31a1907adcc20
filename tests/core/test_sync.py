"""Multi-view sync: every view shows the same moment at each sampled step."""

from __future__ import annotations

import numpy as np
import pytest

from mplstm.core.errors import ViewsOutOfSyncError
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.sync import (
    common_duration,
    fixed_rate_times,
    nearest_frame,
    nearest_frames,
    sample_times,
    step_time,
    steps_before,
)


def test_sample_times_are_the_centres_of_equal_bins():
    np.testing.assert_allclose(sample_times(1.0, 4), [0.125, 0.375, 0.625, 0.875])


def test_nearest_frames_picks_the_closest_timestamp_and_the_earlier_on_a_tie():
    stamps = np.array([0.0, 0.1, 0.2, 0.4])
    times = np.array([-0.5, 0.04, 0.05, 0.06, 0.29, 0.31, 0.9])
    np.testing.assert_array_equal(nearest_frames(stamps, times), [0, 0, 0, 1, 2, 3, 3])


def test_nearest_frames_repeats_frames_when_a_view_has_fewer_frames_than_samples():
    stamps = np.array([0.0, 0.5])
    picked = nearest_frames(stamps, sample_times(1.0, 6))
    np.testing.assert_array_equal(picked, [0, 0, 1, 1, 1, 1])


def test_common_duration_is_the_shortest_view_within_tolerance():
    assert common_duration({"a": 1.2, "b": 1.1, "c": 1.25}, 0.2) == 1.1


def test_common_duration_refuses_views_further_apart_than_tolerance_and_names_them():
    with pytest.raises(ViewsOutOfSyncError, match=r"'b' and 'a' differ by 0\.50 s"):
        common_duration({"a": 1.0, "b": 1.5}, 0.2)


def _assert_every_view_shows_the_sampled_moment(clip, views, read_codes):
    """Each view shows the written frame nearest each sample time (so within half a frame)."""
    shown_ms = read_codes(clip.frames)  # [V, T]
    for v, written in enumerate(views):
        nearest = np.abs(written.times[:, None] - clip.timestamps[None, :]).argmin(axis=0)
        np.testing.assert_array_equal(shown_ms[v], written.codes[nearest], err_msg=f"view {v}")
        half_frame = np.diff(written.times).max() / 2
        assert np.all(np.abs(shown_ms[v] / 1000 - clip.timestamps) <= half_frame + 1e-3)


def test_views_with_different_rates_offsets_and_containers_show_the_same_moments(
    coded_view, read_codes
):
    intervals_ms = np.random.default_rng(0).integers(25, 60, size=40)
    vfr_times = np.concatenate([[0], np.cumsum(intervals_ms)]) / 1000
    vfr_times = vfr_times[vfr_times < 1.2]
    views = [
        coded_view("front.mp4", fps=25, count=30),
        coded_view("left.mkv", fps=30, count=36, start=0.3),
        coded_view("right.webm", fps=15, count=18, start=0.1),
        coded_view("top.mp4", fps=29.97, count=36, start=1.0, codec="mpeg4"),
        coded_view("side.mkv", fps=25, times=vfr_times),
    ]
    config = PreprocessConfig(frames=16, height=32, width=32, sync_tolerance_s=0.2)
    clip = load_clip([view.path for view in views], config)
    assert clip.frames.shape == (5, 16, 1, 32, 32)
    assert [info.offset_s for info in clip.views] == pytest.approx([0, 0.3, 0.1, 1.0, 0], abs=1e-3)
    _assert_every_view_shows_the_sampled_moment(clip, views, read_codes)


def test_rgb_views_in_avi_and_mkv_show_the_same_moments(coded_view, read_codes):
    views = [
        coded_view("a.avi", fps=20, count=20),
        coded_view("b.mkv", fps=24, count=24, start=0.25),
    ]
    config = PreprocessConfig(frames=10, height=32, width=32, channels=3)
    clip = load_clip({"a": views[0].path, "b": views[1].path}, config)
    assert clip.frames.shape == (2, 10, 3, 32, 32)
    _assert_every_view_shows_the_sampled_moment(clip, views, read_codes)


def test_views_of_different_durations_are_refused_beyond_the_tolerance(coded_view):
    short = coded_view("short.mp4", fps=25, count=30)  # 1.2 s
    long = coded_view("long.mp4", fps=25, count=40)  # 1.6 s
    strict = PreprocessConfig(frames=8, height=32, width=32, sync_tolerance_s=0.2)
    with pytest.raises(ViewsOutOfSyncError, match="view1"):
        load_clip([short.path, long.path], strict)
    loose = PreprocessConfig(frames=8, height=32, width=32, sync_tolerance_s=0.5)
    clip = load_clip([short.path, long.path], loose)
    assert clip.timestamps[-1] < 1.2


def test_a_view_truncated_midway_puts_the_clip_out_of_sync(coded_view, tmp_path):
    full = coded_view("full.mkv", fps=25, count=30)
    cut = tmp_path / "cut.mkv"
    data = coded_view("whole.mkv", fps=25, count=30).path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    config = PreprocessConfig(frames=8, height=32, width=32)
    with pytest.raises(ViewsOutOfSyncError):
        load_clip([full.path, cut], config)


def test_fixed_rate_times_are_bin_centres_inside_the_duration_and_at_least_one():
    np.testing.assert_allclose(fixed_rate_times(1.0, 4.0), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(fixed_rate_times(0.95, 4.0), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(fixed_rate_times(0.875, 4.0), [0.125, 0.375, 0.625])
    np.testing.assert_allclose(fixed_rate_times(0.01, 4.0), [0.125])
    with pytest.raises(ValueError, match="fps"):
        fixed_rate_times(1.0, 0.0)


def test_steps_before_an_end_counts_the_steps_an_online_session_samples():
    for fps in (12.5, 25.0, 29.97):
        for end in np.linspace(0.0, 3.0, 97):
            count = steps_before(end, fps)
            assert all(step_time(k, fps) < end for k in range(count))
            assert step_time(count, fps) >= end


def test_fixed_rate_sampling_follows_the_clip_length_and_shows_the_same_moments(
    coded_view, read_codes
):
    views = [
        coded_view("front.mp4", fps=25, count=30),
        coded_view("left.mkv", fps=30, count=36, start=0.3),
        coded_view("right.webm", fps=15, count=18, start=0.1),
    ]
    # 8 steps/s: no step time falls half-way between two frames of these rates (a tie).
    config = PreprocessConfig(frames=16, height=32, width=32, fps=8.0)
    clip = load_clip([view.path for view in views], config)
    assert config.sampling == "fps"
    # 1.2 s at 8 steps/s: 10 steps, every 0.125 s from 0.0625 s.
    assert clip.frames.shape == (3, 10, 1, 32, 32)
    np.testing.assert_allclose(clip.timestamps, 0.0625 + 0.125 * np.arange(10))
    # Each view shows its frame nearest each step time (past a view's last frame, that one).
    shown_ms = read_codes(clip.frames)
    for v, written in enumerate(views):
        nearest = np.abs(written.times[:, None] - clip.timestamps[None, :]).argmin(axis=0)
        np.testing.assert_array_equal(shown_ms[v], written.codes[nearest], err_msg=f"view {v}")


def test_nearest_frame_for_one_time_follows_the_same_rule_as_nearest_frames():
    rng = np.random.default_rng(3)
    for _ in range(200):
        stamps = np.sort(rng.choice(np.arange(0, 2, 0.02), rng.integers(1, 30), replace=False))
        times = np.concatenate([rng.uniform(-0.2, 2.2, 10), stamps, (stamps[:-1] + stamps[1:]) / 2])
        expected = nearest_frames(stamps, times)
        got = [nearest_frame(stamps.tolist(), float(t)) for t in times]
        np.testing.assert_array_equal(got, expected)
