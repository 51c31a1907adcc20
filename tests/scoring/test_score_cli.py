"""`mplstm score` and `mplstm score merge` end to end, on real clips and a real package."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from scoring_helpers import score_in_process, with_views

from mplstm.cli import main
from mplstm.core.manifest import ClipRecord, write_manifest
from mplstm.scoring.output import ChunkStore, read_rows
from mplstm.scoring.rows import ScoreRow
from mplstm.scoring.shards import JOB_INDEX_ENV, Shard


@pytest.fixture(scope="module")
def reference(package_dir: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The unsharded run's rows by id (decoding in 2 worker processes)."""
    out = tmp_path_factory.mktemp("reference")
    assert score_in_process(package_dir, dataset, out, "--decode-workers", "2") == 0
    rows = read_rows(out / "scores.jsonl")
    assert len(rows) == 16 and all(row.ok for row in rows)
    return {row.id: row for row in rows}


def _assert_same_scores(rows: list[ScoreRow], reference: dict[str, ScoreRow]) -> None:
    assert sorted(row.id for row in rows) == sorted(reference)
    for row in rows:
        ref = reference[row.id]
        assert row.prediction == ref.prediction and row.views_used == ref.views_used
        assert row.score == pytest.approx(ref.score, abs=1e-6)
        assert [s for _, s in row.top_k] == pytest.approx([s for _, s in ref.top_k], abs=1e-6)


def test_union_of_shards_equals_the_unsharded_run_and_merge_flags_a_missing_shard(
    package_dir: Path,
    dataset: Path,
    reference: dict[str, ScoreRow],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    assert (
        score_in_process(package_dir, dataset, out, "--num-shards", "3", "--shard-index", "0") == 0
    )
    # Shard 1 as a Kubernetes Indexed Job pod would run it.
    monkeypatch.setenv(JOB_INDEX_ENV, "1")
    assert score_in_process(package_dir, dataset, out, "--num-shards", "3") == 0
    monkeypatch.delenv(JOB_INDEX_ENV)
    capsys.readouterr()
    assert main(["score", "merge", str(out)]) == 1
    report = capsys.readouterr().out
    assert "1 missing shards" in report and ": 2" in report and "manifest ids with no row" in report
    assert not (out / "scores.jsonl").exists()

    assert (
        score_in_process(package_dir, dataset, out, "--num-shards", "3", "--shard-index", "2") == 0
    )
    shard_ids = [
        {row.id for row in ChunkStore(out / Shard(k, 3).name, "jsonl").rows()} for k in range(3)
    ]
    assert all(shard_ids) and sum(map(len, shard_ids)) == len(set().union(*shard_ids)) == 16
    assert main(["score", "merge", str(out)]) == 0
    _assert_same_scores(read_rows(out / "scores.jsonl"), reference)


def test_merge_reports_ids_with_two_rows(
    package_dir: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert score_in_process(package_dir, dataset, out) == 0
    store = ChunkStore(out / Shard().name, "jsonl")
    store.commit(read_rows(store.chunks()[0])[:2])  # as if two processes scored one shard
    capsys.readouterr()
    assert main(["score", "merge", str(out)]) == 1
    assert "2 ids with more than one row" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_runs_hold_the_same_scores_as_jsonl(
    fmt: str, package_dir: Path, dataset: Path, reference: dict[str, ScoreRow], tmp_path: Path
) -> None:
    assert score_in_process(package_dir, dataset, tmp_path, "--format", fmt) == 0
    _assert_same_scores(read_rows(tmp_path / f"scores.{fmt}"), reference)


def test_missing_corrupt_and_unreadable_clips_get_error_rows_and_the_rest_are_scored(
    package_dir: Path,
    records: list[ClipRecord],
    reference: dict[str, ScoreRow],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(bytes(range(256)) * 40)
    bad = [
        with_views(records[0], front=tmp_path / "no-such-file.mp4"),
        with_views(records[1], right30=noise),
    ]
    manifest = write_manifest([*bad, *records[2:8]], tmp_path / "manifest.csv")
    assert score_in_process(package_dir, manifest, tmp_path / "out", "--format", "csv") == 1
    rows = {row.id: row for row in read_rows(tmp_path / "out" / "scores.csv")}
    assert len(rows) == 8
    missing, corrupt = rows[records[0].id], rows[records[1].id]
    assert missing.status == "error" and missing.prediction is None
    assert "view 'front'" in missing.error and "no-such-file.mp4" in missing.error
    assert corrupt.error_code == "unreadable_container" and "view 'right30'" in corrupt.error
    _assert_same_scores(
        [rows[r.id] for r in records[2:8]], {r.id: reference[r.id] for r in records[2:8]}
    )
    summary = capsys.readouterr().out
    assert "6 ok, 2 error(s)" in summary and "unreadable_container 2" in summary


def test_wrong_view_names_give_error_rows_that_name_the_models_views(
    package_dir: Path, records: list[ClipRecord], tmp_path: Path
) -> None:
    renamed = [
        dataclasses.replace(
            r, views=dict(zip(("front", "left", "right"), r.views.values(), strict=True))
        )
        for r in records[:3]
    ]
    manifest = write_manifest(renamed, tmp_path / "manifest.jsonl")
    assert score_in_process(package_dir, manifest, tmp_path / "out") == 1
    rows = read_rows(tmp_path / "out" / "scores.jsonl")
    assert len(rows) == 3 and {row.error_code for row in rows} == {"bad_views"}
    assert "unknown view names ['left', 'right']" in rows[0].error
    assert "front', 'left90', 'right30'" in rows[0].error


def test_rerunning_into_a_used_folder_needs_resume_and_the_same_run(
    package_dir: Path,
    dataset: Path,
    records: list[ClipRecord],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    assert score_in_process(package_dir, dataset, out, "--top-k", "2") == 0
    assert json.loads((out / "run.json").read_text())["num_shards"] == 1
    capsys.readouterr()
    assert score_in_process(package_dir, dataset, out) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert score_in_process(package_dir, dataset, out, "--resume", "--format", "csv") == 2
    assert "format 'jsonl' there, 'csv' now" in capsys.readouterr().err
    assert score_in_process(package_dir, dataset, out, "--resume") == 0
    assert "16 clips, 16 ok" in capsys.readouterr().out
    assert all(len(row.top_k) == 2 for row in read_rows(out / "scores.jsonl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no/such/model"], "neither a model package"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--inference", "workers", "--decode-workers", "0"], "needs --decode-workers >= 1"),
    ],
)
def test_usage_and_package_errors_exit_2_with_a_message(
    args: list[str],
    message: str,
    package_dir: Path,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ["score", "--model", str(package_dir), "--manifest", str(dataset)]
    argv += ["--out", str(tmp_path), "--device", "cpu", "--no-progress", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
