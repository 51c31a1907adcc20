"""`mplstm synth` end to end: arguments in, videos + manifest + metadata out."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from mplstm.cli import main
from mplstm.core.manifest import read_manifest


def test_synth_writes_a_readable_identity_set(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "set"
    argv = ["synth", str(out), "--task", "identity", "--speakers", "2", "--first-speaker", "7"]
    argv += ["--words", "2", "--clips-per-pair", "3", "--views", "3", "--size", "32", "48"]
    argv += ["--fps", "25", "--seed", "4", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 12 clips x 3 views" in capsys.readouterr().out
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 12
    assert {r.label for r in records} == {"s007", "s008"}
    assert list(records[0].views) == ["front", "left90", "right30"]
    with av.open(str(records[0].views["right30"])) as container:
        stream = container.streams.video[0]
        assert (stream.height, stream.width) == (32, 48)
        assert float(stream.average_rate) == pytest.approx(25)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["task"] == "identity" and meta["parameters"]["seed"] == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--words", "40"], "--words must be 1..25"),
        (["--views", "0"], "--views must be 1..5"),
        (["--workers", "-1"], "--workers must be >= 0"),
    ],
)
def test_bad_options_exit_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    argv = ["synth", str(tmp_path / "set"), "--task", "lipreading", "--speakers", "3", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_synth_refuses_to_write_into_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    assert main(["synth", str(tmp_path), "--task", "lipreading", "--speakers", "3"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "old.txt").read_text() == "keep me"
