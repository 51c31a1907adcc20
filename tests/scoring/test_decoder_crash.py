"""A clip that kills its decode worker gets an error row; every other clip is scored as usual."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from scoring_helpers import crash_on, score_in_process, score_with_hooks

from mplstm.core.manifest import ClipRecord
from mplstm.scoring.hooks import ScoringHooks
from mplstm.scoring.output import read_rows


@pytest.mark.parametrize("inference", ["workers", "main"])
def test_a_clip_that_crashes_the_decoder_is_an_error_row_and_the_run_goes_on(
    inference: str,
    package_dir: Path,
    dataset: Path,
    records: list[ClipRecord],
    tmp_path: Path,
) -> None:
    extra = ("--decode-workers", "2", "--inference", inference)
    assert score_in_process(package_dir, dataset, tmp_path / "clean", *extra) == 0
    clean = {row.id: row for row in read_rows(tmp_path / "clean" / "scores.jsonl")}

    poison = records[5].id  # in the second batch of 4: batches before and after it run too
    crash = functools.partial(crash_on, str(records[5].views["front"]))
    # Exit 1: the run finished, with an error row.
    hooks = ScoringHooks(before_decode=crash)
    assert score_with_hooks(package_dir, dataset, tmp_path / "out", hooks, *extra) == 1
    rows = {row.id: row for row in read_rows(tmp_path / "out" / "scores.jsonl")}

    assert sorted(rows) == sorted(clean)
    crashed = rows.pop(poison)
    assert (crashed.status, crashed.error_code) == ("error", "corrupt_video")
    assert "decoder crashed on this clip 2 times" in (crashed.error or "")
    # The clips in flight when the workers died were scored again, not lost or failed.
    for clip_id, row in rows.items():
        assert row.status == "ok", row.error
        assert row.prediction == clean[clip_id].prediction
        assert row.score == pytest.approx(clean[clip_id].score, abs=1e-6)
