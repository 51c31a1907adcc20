"""`mplstm manifest oulu` and `mplstm manifest check` (with `--cameras`) on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mplstm.cli import main
from mplstm.core.manifest import read_manifest, write_manifest
from mplstm.core.synth import SynthConfig, plan_clips
from mplstm.core.synth.camera_failures import write_failed_clip
from mplstm.core.video_writer import write_video


@pytest.fixture()
def oulu_root(tmp_path: Path) -> Path:
    frames = np.zeros((2, 16, 16), dtype=np.uint8)
    for s in (1, 2, 3):
        for v in (1, 5):
            for u in (31, 34):
                path = (
                    tmp_path / "cropped_mouth_mp4_phrase" / str(s) / str(v) / f"s{s}_v{v}_u{u}.mp4"
                )
                write_video(path, frames, 30)
    return tmp_path


def test_oulu_manifest_is_written_with_given_test_speakers(
    oulu_root: Path, capsys: pytest.CaptureFixture
) -> None:
    out = oulu_root / "oulu.csv"
    argv = ["manifest", "oulu", str(oulu_root), "--out", str(out), "--views", "1", "5"]
    assert main([*argv, "--test-speakers", "2", "--val-speakers", "s3"]) == 0
    assert "wrote" in capsys.readouterr().out
    records = read_manifest(out)
    assert {(r.speaker, r.split) for r in records} == {
        ("s1", "train"),
        ("s2", "test"),
        ("s3", "val"),
    }
    assert {r.label for r in records} == {"Excuse me", "Goodbye"}
    assert main(["manifest", "check", str(out)]) == 0
    assert "6 clips, 2 labels, 3 speakers, views ['0deg', '90deg']" in capsys.readouterr().out


def test_check_reports_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("id,label,speaker,split,front\nc0,w,s0,train,missing.mp4\n")
    assert main(["manifest", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "missing.mp4 does not exist" in err


def test_oulu_on_a_wrong_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["manifest", "oulu", str(tmp_path), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "is this the OuluVS2 root" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_check_cameras_lists_every_failed_camera_by_camera_reason_and_clip(
    workers: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = SynthConfig(
        task="lipreading", speakers=1, words=3, views=3, clips_per_pair=1, size=(32, 32)
    )
    plans = plan_clips(config)
    cases = [{}, {"left90": "frozen"}, {"front": "black", "right30": "snow"}]
    records = [write_failed_clip(p, config, c, tmp_path) for p, c in zip(plans, cases, strict=True)]
    manifest = write_manifest(records, tmp_path / "manifest.jsonl")
    argv = ["manifest", "check", str(manifest), "--cameras", "--frames", "8", "--size", "32", "32"]
    assert main([*argv, "--workers", str(workers), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "3 clips checked: 2 with a failed camera, 0 unreadable" in out
    assert (
        "  left90: frozen 1" in out
        and "  front: black 1" in out
        and "  right30: no_signal 1" in out
    )
    assert f"{records[1].id}: view 'left90': frozen" in out
    good = write_manifest(records[:1], tmp_path / "good.jsonl")
    assert (
        main(["manifest", "check", str(good), "--cameras", "--size", "32", "32", "--no-progress"])
        == 0
    )
    assert "1 clips checked: 0 with a failed camera" in capsys.readouterr().out
