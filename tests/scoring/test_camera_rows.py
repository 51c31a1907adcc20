"""`mplstm score` on clips with failed cameras: rows say which camera was dropped and why and
the accuracy to expect from the rest; the summary counts drops by camera and reason."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from scoring_helpers import score_in_process

from mplstm.core.manifest import ClipRecord, write_manifest
from mplstm.core.package import load_package, resolve_package
from mplstm.core.synth import SynthConfig, plan_clips
from mplstm.core.synth.camera_failures import FAILURE_KINDS, expected_failures, write_failed_clip
from mplstm.scoring.layout import SUMMARY_FILE
from mplstm.scoring.output import read_rows

FAILING = SynthConfig(
    task="lipreading", speakers=1, words=4, views=3, clips_per_pair=3, size=(32, 32), split="test"
)
VIEWS = tuple(v.name for v in FAILING.view_specs)


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """Two good clips, one per failure kind, and two cameras failed at once; the manifest
    and, per clip id, the failures `check_views` must report."""
    out = tmp_path_factory.mktemp("failing")
    plans = iter(plan_clips(FAILING))
    cases = [{}, {}, *({VIEWS[k % 3]: kind} for k, kind in enumerate(FAILURE_KINDS))]
    cases.append({VIEWS[0]: "snow", VIEWS[2]: "blank"})
    records: list[ClipRecord] = []
    expected = {}
    for case in cases:
        record = write_failed_clip(next(plans), FAILING, case, out)
        records.append(record)
        expected[record.id] = expected_failures(VIEWS, case)
    return write_manifest(records, out / "manifest.jsonl"), expected


@pytest.fixture(scope="module")
def dropout_package(
    tiny_checkpoint: Callable[..., Path], dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny package whose model allows missing views, its view-subset table measured."""
    from mplstm.export.package import build_package

    out = tmp_path_factory.mktemp("dropout") / "models" / "tiny-dropout" / "1"
    build_package(tiny_checkpoint("mplstm", view_dropout=0.2), out, eval_data=dataset)
    return out.parent


def _summary(out: Path) -> dict:
    return json.loads(next(out.rglob(SUMMARY_FILE)).read_text())


@pytest.mark.parametrize("inference", ["main", "workers"])
def test_rows_carry_dropped_cameras_and_expected_accuracy_and_the_summary_counts_them(
    inference: str,
    dropout_package: Path,
    failing: tuple[Path, dict[str, dict[str, str]]],
    tmp_path: Path,
) -> None:
    manifest, expected = failing
    workers = ("--decode-workers", "1") if inference == "workers" else ()
    argv = ("--inference", inference, *workers)
    assert score_in_process(dropout_package, manifest, tmp_path / "out", *argv) == 0
    rows = {r.id: r for r in read_rows(tmp_path / "out" / "scores.jsonl")}
    package = load_package(resolve_package(dropout_package)).manifest
    for clip_id, failures in expected.items():
        row = rows[clip_id]
        assert row.ok, row.error
        assert {view: reason for view, reason, _ in row.views_dropped} == failures, clip_id
        assert row.views_used == tuple(v for v in VIEWS if v not in failures)
        assert row.expected_accuracy == package.expected_accuracy(row.views_used)
    counts = Counter((v, r) for failures in expected.values() for v, r in failures.items())
    summary = _summary(tmp_path / "out")
    assert {
        (view, reason): n
        for view, reasons in summary["views_dropped"].items()
        for reason, n in reasons.items()
    } == dict(counts)
    assert sum(counts.values()) == len(FAILURE_KINDS) + 2


def test_a_model_that_needs_every_view_gets_camera_failed_rows_naming_the_camera(
    package_dir: Path, failing: tuple[Path, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    manifest, expected = failing
    out = tmp_path / "out"
    assert score_in_process(package_dir, manifest, out, "--format", "parquet") == 1
    rows = {r.id: r for r in read_rows(out / "scores.parquet")}
    for clip_id, failures in expected.items():
        row = rows[clip_id]
        if not failures:
            assert row.ok and row.views_dropped == ()
            continue
        assert (row.status, row.error_code) == ("error", "camera_failed")
        assert {view: reason for view, reason, _ in row.views_dropped} == failures
        assert all(f"view {view!r}: {reason}" in row.error for view, reason in failures.items())
    summary = _summary(out)
    assert summary["errors_by_code"] == {"camera_failed": len(FAILURE_KINDS) + 1}
    assert sum(n for reasons in summary["views_dropped"].values() for n in reasons.values()) == (
        len(FAILURE_KINDS) + 2
    )


def test_camera_checks_off_score_every_camera_as_sent(
    dropout_package: Path, failing: tuple[Path, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    manifest, expected = failing
    out = tmp_path / "out"
    assert (
        score_in_process(
            dropout_package, manifest, out, "--camera-checks", "off", "--format", "csv"
        )
        == 0
    )
    rows = read_rows(out / "scores.csv")
    assert len(rows) == len(expected)
    assert all(r.views_dropped == () and r.views_used == VIEWS for r in rows)
    assert _summary(out)["views_dropped"] == {}
    everything = load_package(resolve_package(dropout_package)).manifest.expected_accuracy(VIEWS)
    assert {r.expected_accuracy for r in rows} == {everything}
