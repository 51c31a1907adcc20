"""The decode → batch → infer pipeline gives the scores of a direct run and of `mplstm evaluate`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scoring_helpers import with_views

from mplstm.core.manifest import ClipRecord
from mplstm.core.package import ONNX_NAME, ModelPackage
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.inference.backend import Backend
from mplstm.scoring.pipeline import StageTimes, score_batches, score_clips


@pytest.fixture(scope="module")
def config(package: ModelPackage) -> PreprocessConfig:
    return package.manifest.preprocess_config()


def test_scores_equal_a_direct_onnxruntime_run_on_load_clip_output(
    package: ModelPackage, backend: Backend, config: PreprocessConfig, records: list[ClipRecord]
) -> None:
    chosen = records[:7]
    # Batches of 3 over one decode process: batches mix clips in completion order.
    scores = score_clips(chosen, backend, config, batch_size=3, decode_workers=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(package.path / ONNX_NAME), options)
    for record in chosen:
        clip = load_clip(dict(record.views), config)
        (expected,) = session.run(
            ["probabilities"], {"clip": clip.frames[None], "view_mask": clip.view_mask[None]}
        )
        result = scores[record.id]
        assert result.error is None
        np.testing.assert_allclose(result.probabilities, expected[0], atol=1e-5)
        assert result.views_used == ("front", "left90", "right30")


def test_scores_equal_mplstm_evaluate_predictions_for_the_same_checkpoint(
    checkpoint: Path, backend: Backend, config: PreprocessConfig, records: list[ClipRecord]
) -> None:
    import torch

    from mplstm.training.checkpoint import load_model
    from mplstm.training.data import ClipDataset, make_loader
    from mplstm.training.evaluate import predict

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, meta = load_model(checkpoint)
        dataset = ClipDataset(records, meta.labels, meta.preprocess, None)
        subset_logits, labels = predict(model, make_loader(dataset, 8), torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    logits = subset_logits[tuple(range(len(meta.view_names)))]
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    scores = score_clips(records, backend, config, batch_size=5, decode_workers=0)
    got = np.stack([scores[r.id].probabilities for r in records])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [meta.labels[i] for i in labels] == [r.label for r in records]


def test_bad_clips_give_errors_and_the_rest_are_scored(
    backend: Backend, config: PreprocessConfig, records: list[ClipRecord], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(records[0].views["front"].read_bytes()[:300])
    bad = [
        dataclasses.replace(with_views(records[0], front=tmp_path / "gone.mp4"), id="missing"),
        dataclasses.replace(with_views(records[1], left90=empty), id="empty"),
        dataclasses.replace(with_views(records[2], right30=truncated), id="truncated"),
    ]
    times = StageTimes()
    groups = list(
        score_batches(
            [*bad, *records[3:6]], backend, config, batch_size=2, decode_workers=0, times=times
        )
    )
    scores = {s.record.id: s for group in groups for s in group}
    assert len(scores) == 6 and times.clips == 6
    assert {i for i, s in scores.items() if s.error is None} == {r.id for r in records[3:6]}
    assert scores["missing"].error_code == "unreadable_container"
    assert "gone.mp4" in scores["missing"].error and "'front'" in scores["missing"].error
    assert scores["empty"].error_code == "unreadable_container"
    assert "'left90'" in scores["empty"].error
    assert scores["truncated"].error_code in ("unreadable_container", "corrupt_video")
    assert "'right30'" in scores["truncated"].error
    # Only decoded clips reach the model.
    assert sum(times.batch_sizes) == 3
