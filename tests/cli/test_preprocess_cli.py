"""`mplstm preprocess`: per-view report, the .npz a model would get, the contact sheet."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mplstm.cli import main
from mplstm.core.clip import Clip
from mplstm.core.preprocess import normalize
from mplstm.core.video_writer import write_video


@pytest.fixture
def view_files(tmp_path):
    ramp = np.linspace(0, 255, 25 * 32 * 32).astype(np.uint8).reshape(25, 32, 32)
    return [
        write_video(tmp_path / "front.mp4", ramp, 25),
        write_video(tmp_path / "side.mkv", ramp[:24], 24, start_time=0.5),
        write_video(tmp_path / "top.avi", ramp[:20], 20),
    ]


def test_preprocess_writes_the_clip_and_contact_sheet_and_reports_each_view(
    view_files, tmp_path, capsys
):
    out, png = tmp_path / "clip.npz", tmp_path / "sheet.png"
    args = ["preprocess", *map(str, view_files), "--frames", "8", "--size", "32", "32", "--gray"]
    assert main([*args, "--out", str(out), "--png", str(png)]) == 0
    clip = Clip.load_npz(out)
    assert clip.frames.shape == (3, 8, 1, 32, 32) and clip.view_mask.all()
    assert [info.frames_decoded for info in clip.views] == [25, 24, 20]
    assert clip.view_names == ("front", "side", "top")
    printed = capsys.readouterr().out
    assert "side.mkv" in printed and "0.500" in printed  # the late start of the side view
    assert " 24.0" in printed and " 20.00" in printed  # fps seen (MKV stores whole ms)
    with av.open(str(png)) as container:
        sheet = next(container.decode(video=0))
    # 3 rows x 8 columns of 96 px cells (32 px scaled 3x) with 2 px gaps.
    assert (sheet.height, sheet.width) == (2 + 3 * 98, 2 + 8 * 98)


def test_mean_and_std_add_the_normalized_frames(view_files, tmp_path):
    out = tmp_path / "clip.npz"
    args = ["preprocess", *map(str, view_files), "--frames", "4", "--size", "16", "16", "--gray"]
    assert main([*args, "--mean", "0.421", "--std", "0.165", "--out", str(out)]) == 0
    with np.load(out) as data:
        np.testing.assert_allclose(data["normalized"], normalize(data["frames"], 0.421, 0.165))


def test_a_bad_view_fails_with_its_name_and_status_2(view_files, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    args = ["preprocess", str(view_files[0]), str(bad), "--view-names", "front", "side"]
    assert main([*args, "--out", str(tmp_path / "x.npz")]) == 2
    assert "view 'side'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
