"""load_clip: view names and absent views, layout, normalization, npz and the contact sheet."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mplstm.core.clip import Clip, ViewInfo
from mplstm.core.contact_sheet import contact_sheet, write_png
from mplstm.core.errors import ViewNamesError
from mplstm.core.preprocess import PreprocessConfig, load_clip, named_views, normalize
from mplstm.core.video_writer import write_video

NAMES = ("front", "side", "top")


@pytest.fixture
def flat_views(tmp_path):
    """One 1 s view per name, each a different flat gray level, so rows can be told apart."""
    return {
        name: write_video(tmp_path / f"{name}.mp4", np.full((25, 32, 48), level, np.uint8), 25)
        for name, level in zip(NAMES, (40, 130, 220), strict=True)
    }


def _config(**overrides) -> PreprocessConfig:
    return PreprocessConfig(
        **{"frames": 6, "height": 16, "width": 16, "view_names": NAMES, **overrides}
    )


def test_mapping_is_laid_out_in_the_model_view_order(flat_views):
    shuffled = {name: flat_views[name] for name in reversed(NAMES)}
    clip = load_clip(shuffled, _config())
    assert clip.view_names == NAMES
    assert clip.frames.shape == (3, 6, 1, 16, 16) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.frames.mean(axis=(1, 2, 3, 4)), [40, 130, 220], atol=3)
    assert clip.view_mask.tolist() == [True, True, True]
    assert all(info.frames_decoded == 25 and info.width == 48 for info in clip.views)


def test_absent_view_is_zeros_with_mask_false_when_the_model_allows_it(flat_views):
    views = {"front": flat_views["front"], "side": None, "top": flat_views["top"]}
    clip = load_clip(views, _config(allow_missing_views=True))
    assert clip.view_mask.tolist() == [True, False, True]
    assert not clip.frames[1].any() and clip.frames[0].all()
    assert clip.views[1] == ViewInfo.absent()
    # Left out of the mapping altogether is the same as None.
    del views["side"]
    np.testing.assert_array_equal(
        load_clip(views, _config(allow_missing_views=True)).frames, clip.frames
    )


def test_missing_view_is_refused_by_name_when_the_model_needs_every_view(flat_views):
    with pytest.raises(ViewNamesError, match="'side'"):
        load_clip({"front": flat_views["front"], "top": flat_views["top"]}, _config())


def test_unknown_view_name_is_refused_and_named(flat_views):
    with pytest.raises(ViewNamesError, match="'back'"):
        load_clip({**flat_views, "back": flat_views["top"]}, _config())


def test_wrong_number_of_views_in_a_sequence_is_refused(flat_views):
    with pytest.raises(ViewNamesError, match="2 views given; this model takes 3"):
        load_clip([flat_views["front"], flat_views["side"]], _config())


def test_every_view_absent_is_refused(flat_views):
    with pytest.raises(ViewNamesError, match="every view is absent"):
        load_clip([None, None, None], _config(allow_missing_views=True))


def test_duplicate_view_names_are_refused_by_name(flat_views):
    pairs = [
        ("front", flat_views["front"]),
        ("side", flat_views["side"]),
        ("front", flat_views["top"]),
    ]
    with pytest.raises(ViewNamesError, match="'front'"):
        named_views(pairs)
    assert list(named_views(pairs[:2])) == ["front", "side"]


def test_sequence_without_names_gets_positional_names(flat_views):
    clip = load_clip(list(flat_views.values()), _config(view_names=None))
    assert clip.view_names == ("view0", "view1", "view2")


def test_normalize_scales_to_unit_range_then_applies_mean_and_std_per_channel():
    frames = np.array([0, 51, 255], np.uint8).reshape(1, 3, 1, 1).repeat(2, axis=-1)
    out = normalize(frames, (0.0, 0.2, 0.5), (1.0, 0.5, 0.25))
    assert out.dtype == np.float32 and out.shape == frames.shape
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(
        normalize(frames, 0.421, 0.165), (frames / 255 - 0.421) / 0.165, rtol=1e-5
    )


def test_config_refuses_values_no_model_can_use():
    for bad in (
        {"channels": 2},
        {"frames": 0},
        {"std": 0.0},
        {"mean": (0.1, 0.2)},
        {"view_names": ("a", "a")},
    ):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


def test_npz_round_trip_keeps_frames_mask_names_and_view_info(flat_views, tmp_path):
    clip = load_clip(
        {"front": flat_views["front"], "top": flat_views["top"]}, _config(allow_missing_views=True)
    )
    loaded = Clip.load_npz(clip.save_npz(tmp_path / "clip.npz"))
    np.testing.assert_array_equal(loaded.frames, clip.frames)
    np.testing.assert_array_equal(loaded.view_mask, clip.view_mask)
    np.testing.assert_array_equal(loaded.timestamps, clip.timestamps)
    assert loaded.view_names == clip.view_names and loaded.views == clip.views


def test_contact_sheet_places_each_view_frame_in_its_cell_and_round_trips_as_png(
    flat_views, tmp_path
):
    clip = load_clip(
        {"front": flat_views["front"], "top": flat_views["top"]}, _config(allow_missing_views=True)
    )
    sheet = contact_sheet(clip, scale=2, gap=3)
    cell = 16 * 2 + 3
    assert sheet.shape == (3 + 3 * cell, 3 + 6 * cell, 3)
    for v in range(3):
        for t in range(6):
            top, left = 3 + v * cell, 3 + t * cell
            image = sheet[top : top + 32, left : left + 32]
            if clip.view_mask[v]:
                expected = clip.frames[v, t, 0].repeat(2, axis=0).repeat(2, axis=1)
                np.testing.assert_array_equal(image[..., 1], expected)
            else:
                assert len(np.unique(image)) == 2  # the checkerboard of an absent view
    path = write_png(tmp_path / "sheet.png", sheet)
    with av.open(str(path)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")
    np.testing.assert_array_equal(decoded, sheet)


def test_a_view_with_fewer_frames_than_t_repeats_its_frames_in_order(coded_view, read_codes):
    short = coded_view("short.mkv", fps=5, count=5)  # 1 s, 5 frames
    clip = load_clip([short.path], PreprocessConfig(frames=12, height=32, width=32))
    shown = read_codes(clip.frames)[0]
    assert set(shown) == set(short.codes)
    assert np.all(np.diff(shown) >= 0)
