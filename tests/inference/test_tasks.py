"""What a worker runs: decoding keeps a bad clip's error, inference batches the good ones,
and each worker keeps one CPU session per package."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mplstm.core.errors import CorruptVideoError, UnreadableContainerError
from mplstm.core.manifest import ClipRecord
from mplstm.core.package import ModelPackage, load_package
from mplstm.core.preprocess import load_clip
from mplstm.inference.options import BackendOptions
from mplstm.inference.select import open_backend
from mplstm.inference.sessions import worker_session
from mplstm.inference.tasks import (
    decode,
    decode_and_infer,
    decoder_crashed,
    infer_decoded,
    warm_up_worker,
)


@pytest.fixture(scope="module")
def package(package_dir: Path) -> ModelPackage:
    return load_package(package_dir)


def test_a_clip_that_cannot_be_decoded_comes_back_as_its_error(
    package: ModelPackage, records: list[ClipRecord], tmp_path: Path
) -> None:
    config = package.manifest.preprocess_config()
    views = {**records[0].views, "left90": tmp_path / "gone.mp4"}
    decoded = decode(views, config)
    assert isinstance(decoded.error, UnreadableContainerError)
    assert decoded.error.view == "left90" and decoded.frames is None
    with pytest.raises(UnreadableContainerError):
        decoded.clip()


def test_decode_gives_load_clip_and_calls_the_injected_fault_first(
    package: ModelPackage, records: list[ClipRecord]
) -> None:
    config = package.manifest.preprocess_config()
    seen: list[object] = []
    decoded = decode(dict(records[0].views), config, before=seen.append)
    frames, mask = decoded.clip()
    expected = load_clip(dict(records[0].views), config)
    np.testing.assert_array_equal(frames, expected.frames)
    assert mask.tolist() == expected.view_mask.tolist() and decoded.decode_s > 0
    assert seen == [dict(records[0].views)]


def test_decode_and_infer_batches_the_clips_that_decode_and_keeps_the_others_errors(
    package: ModelPackage, records: list[ClipRecord], tmp_path: Path
) -> None:
    config = package.manifest.preprocess_config()
    bad = {**records[1].views, "front": tmp_path / "gone.mp4"}
    clips = [dict(records[0].views), bad, dict(records[2].views)]
    scored = decode_and_infer(clips, config, package, threads=1, keep=1)
    assert [s.error is None for s in scored] == [True, False, True]
    assert scored[1].views_used == () and scored[1].probabilities is None
    assert {s.batch_size for s in scored} == {2}
    backend = open_backend(package, BackendOptions(device="cpu", threads=1))
    try:
        direct = infer_decoded([decode(clips[0], config), decode(clips[2], config)], backend)
    finally:
        backend.close()
    for got, expected in zip((scored[0], scored[2]), direct, strict=True):
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-6)
        assert got.views_used == ("front", "left90", "right30")


def test_a_worker_keeps_a_session_per_served_model_and_drops_the_least_recent(
    package_dir: Path, tmp_path: Path
) -> None:
    import shutil

    first_package = load_package(package_dir)
    copy = load_package(shutil.copytree(package_dir, tmp_path / "other" / "1"))
    first = worker_session(first_package, 1, keep=2)
    other = worker_session(copy, 1, keep=2)
    assert other is not first
    assert worker_session(first_package, 1, keep=2) is first  # both models kept
    assert worker_session(copy, 1, keep=1) is other  # the most recent stays...
    assert worker_session(first_package, 1, keep=1) is not first  # ...the other was closed


def test_warm_up_opens_the_workers_session(package: ModelPackage) -> None:
    warm_up_worker(package, 1, 1)
    assert worker_session(package, 1, 1) is worker_session(package, 1, 1)


def test_a_crashed_clip_is_corrupt_and_says_how_to_resend() -> None:
    error = decoder_crashed("send it again")
    assert isinstance(error, CorruptVideoError)
    assert "crashed on this clip 2 times" in str(error) and "send it again" in str(error)


def test_scored_says_which_views_were_used_and_none_for_a_failed_clip(
    package: ModelPackage, records: list[ClipRecord]
) -> None:
    config = package.manifest.preprocess_config()
    (scored,) = decode_and_infer([dict(records[0].views)], config, package, threads=1, keep=1)
    assert scored.views_used == ("front", "left90", "right30")
    assert dataclasses.replace(scored, view_mask=np.array([True, False, True])).views_used == (
        "front",
        "right30",
    )
    # This package needs every view: one missing is the clip's error, and no view was used.
    (missing,) = decode_and_infer(
        [{**records[0].views, "left90": None}], config, package, threads=1, keep=1
    )
    assert missing.error is not None and missing.views_used == ()


def test_clips_of_a_live_package_infer_one_run_per_length_with_each_clips_own_answer(
    tiny_checkpoint, records: list[ClipRecord], tmp_path: Path
) -> None:
    from mplstm.export.package import build_package

    live = build_package(tiny_checkpoint("mplstm", fps=10.0), tmp_path / "live" / "1")
    config = live.manifest.preprocess_config()
    decoded = [decode(record.views, config) for record in records]
    lengths = {d.frames.shape[1] for d in decoded}
    assert len(lengths) > 1  # fixed-rate sampling: T follows each clip's length
    backend = open_backend(live, BackendOptions(device="cpu"))
    together = infer_decoded(decoded, backend)
    for d, scored in zip(decoded, together, strict=True):
        alone = backend.infer(d.frames[None], d.view_mask[None]).probabilities[0]
        np.testing.assert_allclose(scored.probabilities, alone, rtol=0, atol=1e-6)
