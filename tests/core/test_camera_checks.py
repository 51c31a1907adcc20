"""Camera checks on real video files: every failure kind caught, alone and two at once, and
no good clip of the example sets or of the synthetic test sets ever flagged."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest

from mplstm.core.camera_checks import (
    DEFAULT_THRESHOLDS,
    REASONS,
    check_views,
    view_differences,
    view_stats,
)
from mplstm.core.decode import decode_view
from mplstm.core.errors import CameraFailedError
from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.package import read_package_manifest
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.synth import SynthConfig, generate, plan_clips, render_clip
from mplstm.core.synth.camera_failures import (
    EXPECTED_REASON,
    FAILURE_KINDS,
    MEASURED_SETS,
    expected_failures,
    write_failed_clip,
)
from mplstm.core.video_writer import write_video

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ("lipreading", "identity")
# What models of the suite and the demo packages ask for: T, H = W, channels.
SHAPES = {"train-cli": (6, 24, 1), "tiny": (8, 32, 1), "demo": (16, 64, 1), "rgb": (8, 32, 3)}
FAILING = SynthConfig(task="lipreading", speakers=1, words=5, clips_per_pair=3, size=(32, 32))
VIEWS = tuple(v.name for v in FAILING.view_specs)


def _config(shape: tuple[int, int, int], **changes) -> PreprocessConfig:
    frames, size, channels = shape
    values = {"camera_checks": True, "allow_missing_views": True, **changes}
    return PreprocessConfig(frames=frames, height=size, width=size, channels=channels, **values)


def _flagged(records: list[ClipRecord], config: PreprocessConfig) -> dict[str, list[str]]:
    flagged = {}
    for record in records:
        clip = load_clip(dict(record.views), config)
        if clip.views_dropped:
            flagged[record.id] = [f.describe() for f in clip.views_dropped]
    return flagged


@pytest.fixture(scope="module")
def test_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[ClipRecord]]:
    out = {}
    for name, config in MEASURED_SETS.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = generate(config, folder, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[ClipRecord, dict[str, str]]]:
    """Clips with one camera failed in each way, then two at once in every pairing."""
    folder = tmp_path_factory.mktemp("failing")
    plans = itertools.cycle(plan_clips(FAILING))
    cases: list[dict[str, str]] = []
    for k, kind in enumerate(FAILURE_KINDS):
        cases.append({VIEWS[k % len(VIEWS)]: kind})
    for k, (first, second) in enumerate(itertools.combinations(FAILURE_KINDS, 2)):
        cases.append({VIEWS[k % len(VIEWS)]: first, VIEWS[(k + 2) % len(VIEWS)]: second})
    return [(write_failed_clip(next(plans), FAILING, case, folder), case) for case in cases]


@pytest.mark.parametrize("task", EXAMPLES)
def test_no_example_clip_is_flagged_with_its_package_preprocessing(task: str) -> None:
    manifest = read_package_manifest(REPO / "models" / f"demo-{task}" / "1")
    config = dataclasses.replace(
        manifest.preprocess_config(), camera_checks=True, allow_missing_views=True
    )
    records = read_manifest(REPO / "models" / "examples" / task / "manifest.jsonl")
    assert len(records) == 20
    assert _flagged(records, config) == {}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_no_clip_of_the_examples_or_the_synthetic_test_sets_is_flagged(
    shape: tuple[int, int, int], test_sets: dict[str, list[ClipRecord]]
) -> None:
    examples = [
        record
        for task in EXAMPLES
        for record in read_manifest(REPO / "models" / "examples" / task / "manifest.jsonl")
    ]
    every = examples + [r for records in test_sets.values() for r in records]
    assert _flagged(every, _config(shape)) == {}


@pytest.mark.parametrize("shape", [SHAPES["tiny"], SHAPES["demo"], SHAPES["rgb"]], ids=str)
def test_each_failure_kind_alone_and_two_at_once_is_masked_with_its_reason(
    shape: tuple[int, int, int], failing: list[tuple[ClipRecord, dict[str, str]]]
) -> None:
    assert {kind for _, case in failing for kind in case.values()} == set(FAILURE_KINDS)
    for record, case in failing:
        clip = load_clip(dict(record.views), _config(shape))
        expected = expected_failures(VIEWS, case)
        assert {f.view: f.reason for f in clip.views_dropped} == expected, record.id
        for failure in clip.views_dropped:
            v = VIEWS.index(failure.view)
            assert not clip.view_mask[v] and not clip.frames[v].any()
        assert clip.view_mask.sum() == len(VIEWS) - len(expected)


def test_generated_failures_cover_every_reason() -> None:
    assert set(EXPECTED_REASON.values()) == set(REASONS)


def test_a_failed_camera_is_refused_by_name_where_the_model_needs_every_view(
    failing: list[tuple[ClipRecord, dict[str, str]]],
) -> None:
    record, case = next((r, c) for r, c in failing if list(c.values()) == ["frozen"])
    (view,) = case
    with pytest.raises(CameraFailedError) as caught:
        load_clip(dict(record.views), _config(SHAPES["tiny"], allow_missing_views=False))
    error = caught.value
    assert error.code == "camera_failed" and error.http_status == 422
    assert error.view == view and [(f.view, f.reason) for f in error.failures] == [(view, "frozen")]
    assert f"view {view!r}: frozen" in str(error) and "needs every view" in str(error)
    # Raised in a decode worker, it reaches the parent whole.
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.view, again.failures) == (
        CameraFailedError,
        str(error),
        error.view,
        error.failures,
    )


def test_a_clip_whose_every_camera_failed_is_refused(tmp_path: Path) -> None:
    plan = plan_clips(FAILING)[0]
    names = VIEWS[:2]
    case = {names[0]: "black", names[1]: "snow"}
    config = dataclasses.replace(FAILING, views=2)
    record = write_failed_clip(plan, config, case, tmp_path)
    with pytest.raises(CameraFailedError, match="every view failed") as caught:
        load_clip(dict(record.views), _config(SHAPES["tiny"]))
    assert {f.view: f.reason for f in caught.value.failures} == {
        names[0]: "black",
        names[1]: "no_signal",
    }


def test_checks_off_keep_every_view_of_a_failed_clip(
    failing: list[tuple[ClipRecord, dict[str, str]]],
) -> None:
    record, _ = failing[0]
    clip = load_clip(dict(record.views), _config(SHAPES["tiny"], camera_checks=False))
    assert clip.view_mask.all() and clip.views_dropped == ()


def test_a_low_frame_rate_camera_repeating_samples_is_not_frozen(tmp_path: Path) -> None:
    """Fewer frames than samples: each frame is taken several times, which is not stillness."""
    views = render_clip(plan_clips(FAILING)[1], FAILING)
    paths = {}
    for view in views:
        if view.name == "left90":  # 6 fps: about a third of the samples repeat a frame
            step = round(view.fps / 6)
            paths[view.name] = write_video(
                tmp_path / "left90.mp4", view.frames[::step], view.fps / step, start_time=view.start
            )
        else:
            paths[view.name] = write_video(
                tmp_path / f"{view.name}.mp4", view.frames, view.fps, start_time=view.start
            )
    clip = load_clip(paths, _config((20, 32, 1), sync_tolerance_s=0.5))
    assert clip.views[VIEWS.index("left90")].frames_decoded < 20
    assert clip.views_dropped == ()


def test_checks_run_on_a_window_of_frames_as_a_live_session_holds_them(
    failing: list[tuple[ClipRecord, dict[str, str]]],
) -> None:
    """Every decoded frame of a stretch of each camera, not T samples of a clip."""
    record, case = next((r, c) for r, c in failing if list(c.values()) == ["frozen"])
    decoded = {n: decode_view(p, height=32, width=32) for n, p in record.views.items()}
    window = min(len(d.timestamps) for d in decoded.values())
    for start, size in ((0, 10), (window - 4, 4)):
        frames = np.stack([decoded[n].take(range(start, start + size)) for n in VIEWS])
        failures = check_views(frames, np.ones(len(VIEWS), bool), VIEWS)
        assert [(f.view, f.reason) for f in failures] == [(*case, "frozen")]
    # One frame: no motion to judge, so only what a single picture shows.
    one = np.stack([decoded[n].take([0]) for n in VIEWS])
    assert check_views(one, np.ones(len(VIEWS), bool), VIEWS) == ()


def test_view_stats_are_absent_for_absent_views_and_measured_for_the_others(
    failing: list[tuple[ClipRecord, dict[str, str]]],
) -> None:
    record, case = failing[0]
    views = dict(record.views)
    views[VIEWS[1]] = None
    clip = load_clip(views, _config(SHAPES["tiny"], camera_checks=False))
    stats = view_stats(clip.frames, clip.view_mask)
    assert stats[1] is None
    measured = [s for i, s in enumerate(stats) if i != 1]
    assert all(s is not None and 0 <= s.level <= 255 and s.contrast >= 0 for s in measured)
    (black,) = case
    assert stats[VIEWS.index(black)].level < 32  # the black camera of this clip


def test_dropped_views_survive_the_npz_round_trip(
    failing: list[tuple[ClipRecord, dict[str, str]]], tmp_path: Path
) -> None:
    record, _ = failing[-1]
    clip = load_clip(dict(record.views), _config(SHAPES["tiny"]))
    assert len(clip.views_dropped) == 2
    again = type(clip).load_npz(clip.save_npz(tmp_path / "clip.npz"))
    assert again.views_dropped == clip.views_dropped
    np.testing.assert_array_equal(again.view_mask, clip.view_mask)


def test_view_differences_are_zero_for_one_stream_on_two_inputs_and_nan_for_absent_views(
    failing: list[tuple[ClipRecord, dict[str, str]]],
) -> None:
    record, case = next((r, c) for r, c in failing if list(c.values()) == ["duplicate"])
    (copy,) = case
    earlier = VIEWS[: VIEWS.index(copy)]
    # The camera it copies (camera_failures.fail_views): the nearest earlier one, else the first.
    source = earlier[-1] if earlier else next(v for v in VIEWS if v != copy)
    absent = next(v for v in VIEWS if v not in (copy, source))
    views = {**record.views, absent: None}
    clip = load_clip(views, _config(SHAPES["tiny"], camera_checks=False))
    differences = view_differences(clip.frames, clip.view_mask)
    a, b = VIEWS.index(copy), VIEWS.index(source)
    assert differences[a, b] == differences[b, a] == 0.0
    others = [
        differences[a, v] for v, name in enumerate(VIEWS) if name not in (copy, source, absent)
    ]
    assert min(others) > DEFAULT_THRESHOLDS.duplicate_difference
    assert np.isnan(differences[VIEWS.index(absent)]).all()
