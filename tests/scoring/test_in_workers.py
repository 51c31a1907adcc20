"""Inference in the decode workers gives the central pipeline's scores, errors included."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from scoring_helpers import score_argv, with_views

from mplstm.cli import main
from mplstm.core.manifest import ClipRecord
from mplstm.core.package import ModelPackage, load_package
from mplstm.core.worker_pool import PoolThread
from mplstm.inference.backend import Backend
from mplstm.inference.options import BackendOptions
from mplstm.inference.select import open_backend
from mplstm.scoring.pipeline import StageTimes, score_clips, score_in_workers
from mplstm.scoring.shards import Shard


@pytest.fixture(scope="module")
def workers() -> Iterator[PoolThread]:
    with PoolThread(2).start() as workers:
        yield workers


def test_workers_give_the_central_pipelines_scores_and_error_rows(
    package: ModelPackage,
    backend: Backend,
    workers: PoolThread,
    records: list[ClipRecord],
    tmp_path: Path,
) -> None:
    config = package.manifest.preprocess_config()
    bad = dataclasses.replace(with_views(records[0], left90=tmp_path / "gone.mp4"), id="missing")
    clips = [bad, *records[1:10]]
    times = StageTimes()
    # Batches of 3 over 10 clips: the last batch is short, one batch holds the bad clip.
    groups = list(
        score_in_workers(clips, package, config, workers, batch_size=3, threads=1, times=times)
    )
    got = {score.record.id: score for group in groups for score in group}
    expected = score_clips(clips, backend, config, batch_size=4, decode_workers=0)
    assert sorted(got) == sorted(r.id for r in clips)
    assert got["missing"].error_code == expected["missing"].error_code == "unreadable_container"
    assert "'left90'" in (got["missing"].error or "")
    for record in records[1:10]:
        assert got[record.id].error is None
        np.testing.assert_allclose(
            got[record.id].probabilities, expected[record.id].probabilities, atol=1e-6
        )
        assert got[record.id].views_used == expected[record.id].views_used
    # Times come back from the workers: every clip decoded, only good ones inferred.
    assert times.clips == 10 and sum(times.batch_sizes) == 9 and times.batches == 4
    assert times.decode_s > 0 and times.inference_s > 0


def test_a_reused_worker_scores_with_the_package_it_is_given_now(
    package: ModelPackage,
    backend: Backend,
    workers: PoolThread,
    records: list[ClipRecord],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
) -> None:
    from mplstm.export.package import build_package

    config = package.manifest.preprocess_config()
    clips = records[:4]
    list(score_in_workers(clips, package, config, workers, threads=1))  # the workers open it
    # Another model (late fusion) for the same views: the workers must drop the first one.
    build_package(tiny_checkpoint("late_fusion"), tmp_path / "other" / "1")
    other = load_package(tmp_path / "other" / "1")
    groups = score_in_workers(clips, other, config, workers, threads=1)
    got = {score.record.id: score for group in groups for score in group}
    other_backend = open_backend(other, BackendOptions("onnxruntime", "cpu", threads=1))
    expected = score_clips(clips, other_backend, config, decode_workers=0)
    other_backend.close()
    before = score_clips(clips, backend, config, decode_workers=0)
    for record in clips:
        np.testing.assert_allclose(
            got[record.id].probabilities, expected[record.id].probabilities, atol=1e-6
        )
        assert not np.allclose(got[record.id].probabilities, before[record.id].probabilities)


@pytest.mark.parametrize(
    ("inference", "where"), [("auto", "2 decode workers"), ("main", "main process")]
)
def test_auto_infers_in_the_workers_on_a_cpu_and_the_summary_says_where(
    inference: str, where: str, package_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = score_argv(package_dir, dataset, out, "--decode-workers", "2", "--inference", inference)
    assert main(argv) == 0
    summary = json.loads((out / Shard().name / "summary.json").read_text())
    assert summary["inference_in"] == where
    assert summary["scored"] == 16 and summary["batches"] == 4
