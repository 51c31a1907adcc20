"""`mplstm evaluate`: metrics, the view-subset table, and the JSON/Markdown/PNG it writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mplstm.cli import main
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.synth import SynthConfig, generate
from mplstm.core.view_subsets import view_subsets
from mplstm.training.checkpoint import (
    CheckpointMeta,
    load_model,
    model_config_dict,
    save_checkpoint,
)
from mplstm.training.data import ClipDataset, collate, decode_record, make_loader, read_data_spec
from mplstm.training.evaluate import accuracy, build_report, predict, top_k_accuracy
from mplstm.training.models import get_model

TINY = SynthConfig(
    task="lipreading", speakers=3, words=3, views=3, clips_per_pair=2, size=(32, 32), seed=3
)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(TINY, out, workers=1, progress=False)
    return out / "manifest.jsonl"


@pytest.fixture(scope="module")
def checkpoint(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained, seeded) model saved the way training saves it."""
    spec = read_data_spec(manifest)
    torch.manual_seed(0)
    model = get_model(
        "mplstm",
        num_classes=3,
        num_views=3,
        hidden_size=8,
        widths=(4, 8, 8),
        mean=(0.4,),
        std=(0.2,),
    )
    preprocess = PreprocessConfig(
        frames=6, height=24, width=24, channels=1, mean=0.4, std=0.2, view_names=spec.view_names
    )
    meta = CheckpointMeta(
        "mplstm", model_config_dict(model), spec.labels, spec.view_names, preprocess, spec.view_yaws
    )
    return save_checkpoint(tmp_path_factory.mktemp("run") / "model.pt", model, meta)


def test_evaluate_writes_json_markdown_and_png_with_every_view_subset(
    manifest: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", str(checkpoint), "--data", str(manifest), "--split", "test"]
    assert main([*args, "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["split"] == "test" and report["clips"] == 6
    assert [tuple(s["views"]) for s in report["subsets"]] == [
        ("front",),
        ("left90",),
        ("right30",),
        ("front", "left90"),
        ("front", "right30"),
        ("left90", "right30"),
        ("front", "left90", "right30"),
    ]
    assert [row["views"] for row in report["by_view_count"]] == [1, 2, 3]
    assert report["accuracy"] == report["subsets"][-1]["accuracy"]
    assert np.array(report["confusion"]).sum() == 6
    assert set(report["per_class"]) == {"w00", "w01", "w02"}

    # Independently: run the model clip by clip with only the subset's views present.
    saved = torch.load(checkpoint, weights_only=True)["model"]
    model = get_model("mplstm", **saved["config"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    spec = read_data_spec(manifest)
    preprocess = PreprocessConfig(
        frames=6, height=24, width=24, channels=1, view_names=spec.view_names
    )
    clips = [decode_record(r, preprocess) for r in spec.split("test")]
    labels = np.array([spec.labels.index(r.label) for r in spec.split("test")])
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))
    with torch.no_grad():
        for subset, row in zip(view_subsets(3), report["subsets"], strict=True):
            mask = torch.zeros(len(clips), 3, dtype=torch.bool)
            mask[:, list(subset)] = True
            predicted = model(frames, mask).argmax(dim=1).numpy()
            assert row["accuracy"] == pytest.approx(np.mean(predicted == labels))

    markdown = (out / "evaluation.md").read_text()
    assert "## How many cameras" in markdown and "| front, left90, right30 |" in markdown
    assert (out / "confusion.png").read_bytes()[:8] == PNG


def test_evaluate_defaults_to_a_folder_beside_the_checkpoint(
    manifest: Path, checkpoint: Path
) -> None:
    args = ["evaluate", str(checkpoint), "--data", str(manifest), "--split", "val"]
    assert main([*args, "--all-views-only", "--threads", "1", "--no-progress"]) == 0
    report = json.loads((checkpoint.parent / "eval-val" / "evaluation.json").read_text())
    assert report["split"] == "val"
    assert [s["views"] for s in report["subsets"]] == [["front", "left90", "right30"]]


def test_report_metrics_follow_from_the_logits() -> None:
    # 4 clips of 6 classes; true labels 0, 1, 2, 2. All views: predictions 0, 2, 2, 5 and
    # the true class second-best for clip 1 only. View 0 alone: everything predicted 0.
    labels = np.array([0, 1, 2, 2])
    everything = np.full((4, 6), -1.0)
    everything[[0, 1, 2, 3], [0, 2, 2, 5]] = 2.0
    everything[1, 1] = 1.0
    only_front = np.zeros((4, 6))
    only_front[:, 0] = 1.0
    report = build_report(
        {(0,): only_front, (0, 1): everything}, labels, list("abcdef"), ["front", "side"]
    )
    assert report.accuracy == 0.5 and report.top_k == 5
    assert report.per_class["a"] == {"accuracy": 1.0, "clips": 1}
    assert report.per_class["c"] == {"accuracy": 0.5, "clips": 2}
    assert report.per_class["d"] == {"accuracy": None, "clips": 0}
    assert report.confusion[2][5] == 1 and report.confusion[1][2] == 1
    assert [(s.views, s.accuracy) for s in report.subsets] == [
        (("front",), 0.25),
        (("front", "side"), 0.5),
    ]
    assert [(c.views, c.best_views) for c in report.by_view_count] == [
        (1, ("front",)),
        (2, ("front", "side")),
    ]


def test_a_clip_left_with_no_view_counts_wrong() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [-np.inf, -np.inf, -np.inf]])
    labels = np.array([0, 0])
    assert accuracy(logits, labels) == 0.5
    assert top_k_accuracy(logits, labels, 3) == 0.5


def test_unknown_split_and_foreign_file_exit_2_with_a_reason(
    manifest: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    args = ["evaluate", str(checkpoint), "--data", str(manifest), "--split", "dev"]
    assert main([*args, "--no-progress"]) == 2
    assert "no clip in split 'dev'" in capsys.readouterr().err
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    assert main(["evaluate", str(foreign), "--data", str(manifest), "--no-progress"]) == 2
    assert "not an mplstm checkpoint" in capsys.readouterr().err


def test_predict_masks_the_views_outside_each_subset(manifest: Path, checkpoint: Path) -> None:
    model, meta = load_model(checkpoint)
    spec = read_data_spec(manifest)
    dataset = ClipDataset(spec.split("test"), meta.labels, meta.preprocess, cache_dir=None)
    logits, labels = predict(model, make_loader(dataset, 4), torch.device("cpu"), view_subsets(3))
    assert labels.tolist() == [meta.labels.index(r.label) for r in spec.split("test")]
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        for subset, out in logits.items():
            mask = torch.zeros(len(dataset), 3, dtype=torch.bool)
            mask[:, list(subset)] = True
            expected = model(batch.frames, mask).numpy()
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Masking changes what the model sees: no two subsets give the same logits.
    outs = list(logits.values())
    assert all(not np.allclose(a, b) for a, b in itertools.combinations(outs, 2))
