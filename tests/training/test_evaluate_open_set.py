"""`mplstm evaluate --open-set`: people never seen in training enrolled, identified, verified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mplstm.cli import main
from mplstm.core.openset import evaluate_open_set, make_protocol
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.synth import SynthConfig, generate
from mplstm.training.checkpoint import (
    CheckpointMeta,
    load_model,
    model_config_dict,
    save_checkpoint,
)
from mplstm.training.data import ClipDataset, make_loader, read_data_spec
from mplstm.training.models import get_model

# People 100..103: never among the checkpoint's classes s001..s003.
UNSEEN = SynthConfig(
    task="identity", speakers=4, first_speaker=100, words=1, views=3, clips_per_pair=3,
    size=(32, 32), seed=5, split="test",
)  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unseen")
    generate(UNSEEN, out, workers=1, progress=False)
    return out / "manifest.jsonl"


def _checkpoint(folder: Path, labels: tuple[str, ...], view_names: tuple[str, ...]) -> Path:
    torch.manual_seed(0)
    model = get_model(
        "mplstm", num_classes=len(labels), num_views=3, hidden_size=8, widths=(4, 8, 8),
        embedding_size=6,
    )  # fmt: skip
    preprocess = PreprocessConfig(frames=6, height=24, width=24, channels=1, view_names=view_names)
    meta = CheckpointMeta(
        "mplstm", model_config_dict(model), labels, view_names, preprocess, task="identity"
    )
    return save_checkpoint(folder / "model.pt", model, meta)


@pytest.fixture(scope="module")
def checkpoint(unseen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    views = read_data_spec(unseen).view_names
    return _checkpoint(tmp_path_factory.mktemp("run"), ("s001", "s002", "s003"), views)


def test_open_set_evaluation_writes_every_subset_thresholds_and_a_roc_plot(
    unseen: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = ["evaluate", str(checkpoint), "--data", str(unseen), "--open-set", "--out", str(out)]
    assert main([*args, "--enrol-clips", "1", "--no-progress"]) == 0
    assert "rank-1" in capsys.readouterr().out
    report = json.loads((out / "open_set.json").read_text())
    assert report["gallery"] == ["s100", "s101"] and report["impostors"] == ["s102", "s103"]
    assert len(report["subsets"]) == 7  # 3 singles, 3 pairs, all three
    everything = report["all_views"]
    assert everything["genuine_probes"] == 2 * 2 and everything["impostor_probes"] == 2 * 3
    for point in everything["operating"]:
        assert point["far"] in (0.01, 0.001) and point["far_measured"] <= point["far"]
    assert (out / "roc.png").read_bytes().startswith(PNG)
    assert "| FAR asked | threshold |" in (out / "open_set.md").read_text()


def test_open_set_figures_are_the_core_metrics_of_the_model_embeddings(
    unseen: Path, checkpoint: Path, tmp_path: Path
) -> None:
    assert main(["evaluate", str(checkpoint), "--data", str(unseen), "--open-set",
                 "--all-views-only", "--out", str(tmp_path), "--no-progress"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "open_set.json").read_text())["all_views"]
    model, meta = load_model(checkpoint)
    records = read_data_spec(unseen).split("test")
    dataset = ClipDataset(records, sorted({r.label for r in records}), meta.preprocess, None)
    with torch.no_grad():
        embeddings = np.concatenate(
            [model.embed(b.frames, b.view_mask)[1].numpy() for b in make_loader(dataset, 4)]
        )
    expected = evaluate_open_set(
        embeddings, make_protocol([r.id for r in records], [r.label for r in records])
    )
    assert report["rank1"] == expected.rank1 and report["eer"] == pytest.approx(expected.eer)
    assert report["operating"][0]["threshold"] == pytest.approx(expected.operating[0].threshold)


def test_people_seen_in_training_are_refused_with_the_fix(
    unseen: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    views = read_data_spec(unseen).view_names
    seen = _checkpoint(tmp_path, ("s100", "s200"), views)
    code = main(["evaluate", str(seen), "--data", str(unseen), "--open-set", "--no-progress"])
    assert code == 2
    assert "never seen in training" in capsys.readouterr().err
