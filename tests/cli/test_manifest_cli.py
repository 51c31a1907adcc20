"""`mplstm manifest oulu` and `mplstm manifest check` on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mplstm.cli import main
from mplstm.core.manifest import read_manifest
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
