"""`mplstm train` end to end on a tiny synthetic set: outputs, checkpoints, resume, config."""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from pathlib import Path

import pytest
import torch

from mplstm.cli import main
from mplstm.core.manifest import read_manifest, write_manifest
from mplstm.core.synth import SynthConfig, generate, plan_clips
from mplstm.core.synth.camera_failures import write_failed_clip
from mplstm.training.checkpoint import load_checkpoint, load_model
from mplstm.training.config import RunConfig, TrainConfig, load_config
from mplstm.training.data import ClipDataset
from mplstm.training.train import lr_at

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = SynthConfig(
    task="lipreading", speakers=3, words=3, views=3, clips_per_pair=2, size=(32, 32), seed=2
)
# A model and input small enough for a few epochs in seconds on one thread.
SMALL = [
    "--set", "model.hidden_size=8",
    "--set", "model.widths=[4,8,8]",
    "--set", "data.frames=6",
    "--set", "data.height=24",
    "--set", "data.width=24",
    "--set", "augment.time_mask=2",
    "--batch-size", "4",
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(TINY, out, workers=1, progress=False)
    return out / "manifest.jsonl"


def _train(manifest: Path, out: Path, *extra: str) -> None:
    assert main(["train", "--data", str(manifest), "--out", str(out), *SMALL, *extra]) == 0


def test_training_writes_self_describing_checkpoints_curves_and_an_evaluation(
    manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _train(manifest, out, "--config", str(CONFIGS / "mplstm_lipreading.toml"), "--epochs", "2")
    for name in ("best.pt", "last.pt", "config.json", "history.json", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert all({"train_loss", "train_acc", "val_loss", "val_acc"} <= set(row) for row in history)

    model, meta = load_model(out / "best.pt")
    assert meta.model_name == "mplstm"
    assert meta.labels == ("w00", "w01", "w02")
    assert meta.view_names == ("front", "left90", "right30")
    assert meta.view_yaws == (0.0, -90.0, 30.0)
    assert (meta.preprocess.frames, meta.preprocess.height, meta.preprocess.channels) == (6, 24, 1)
    assert meta.preprocess.view_names == meta.view_names
    # The config file's view dropout and the overrides reached the model; mean/std were
    # measured ("auto") and are the same in the preprocessing and in the model.
    config_file = tomllib.loads((CONFIGS / "mplstm_lipreading.toml").read_text())
    assert meta.model_config["view_dropout"] == config_file["model"]["view_dropout"]
    assert meta.model_config["hidden_size"] == 8
    assert tuple(meta.model_config["mean"]) == tuple(meta.preprocess.mean) != (0.0,)
    best_epoch = max(history, key=lambda r: (r["val_acc"], -r["val_loss"]))["epoch"]
    assert meta.epoch == best_epoch
    logits = model(torch.zeros(2, 3, 6, 1, 24, 24, dtype=torch.uint8))
    assert logits.shape == (2, 3)

    report = json.loads((out / "eval-test" / "evaluation.json").read_text())
    assert report["checkpoint"].endswith("best.pt") and report["clips"] == 6
    assert (out / "eval-test" / "evaluation.md").is_file()
    assert (out / "eval-test" / "confusion.png").is_file()
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(
    manifest: Path, tmp_path: Path
) -> None:
    run = ("--epochs", "2", "--eval-split", "none")
    _train(manifest, tmp_path / "whole", *run)
    # --time-limit 0 stops after the first step, mid-epoch, with a resumable checkpoint.
    _train(manifest, tmp_path / "split", *run, "--time-limit", "0")
    stopped = load_checkpoint(tmp_path / "split" / "last.pt")
    assert stopped["step"] == 1 and 0 < stopped["epoch"] < 1
    args = ["--out", str(tmp_path / "split"), "--resume", "--threads", "1", "--no-progress"]
    assert main(["train", *args, "--eval-split", "none"]) == 0

    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")
    assert resumed["step"] == whole["step"] == 4
    for name, tensor in whole["model"]["state_dict"].items():
        assert torch.equal(tensor, resumed["model"]["state_dict"][name]), name
    for a, b in zip(
        whole["train"]["optimizer"]["state"].values(),
        resumed["train"]["optimizer"]["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(
            a["exp_avg_sq"], b["exp_avg_sq"]
        )
    assert torch.equal(whole["train"]["torch_rng"], resumed["train"]["torch_rng"])
    # The same epochs report the same training loss.
    whole_rows = {r["epoch"]: r for r in whole["train"]["progress"]["history"]}
    for row in resumed["train"]["progress"]["history"]:
        if row["epoch"] in whole_rows:
            assert row["train_loss"] == whole_rows[row["epoch"]]["train_loss"]


def test_resume_refuses_config_changes(manifest: Path, tmp_path: Path, capsys) -> None:
    _train(manifest, tmp_path, "--epochs", "1", "--eval-split", "none", "--time-limit", "0")
    code = main(["train", "--out", str(tmp_path), "--resume", "--epochs", "5"])
    assert code == 2
    assert "saved config" in capsys.readouterr().err


def test_config_file_then_set_then_flags() -> None:
    config = load_config(
        CONFIGS / "mplstm_lipreading.toml",
        ["train.epochs=7", "model.pooling=mean", "augment.flip=off", "train.epochs=9"],
    )
    assert config.train.epochs == 9  # the later override wins
    assert config.model["pooling"] == "mean" and config.model["name"] == "mplstm"
    assert config.augment.flip == "off"
    assert config.data.frames == 20 and config.data.mean == "auto"
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "train.epoch=3"], "unknown key(s) ['epoch'] in [train]"),
        (["--set", "model.hidden=3"], "unknown config field(s) ['hidden']"),
        (["--set", "trainepochs=3"], "section.key=value"),
        (["--set", "data.mean=bright"], "data.mean must be"),
        (["--set", "augment.flip=on"], "mirrored camera"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--set", "train.view_dropout_start_epoch=-1"], "view_dropout_start_epoch must be >= 0"),
    ],
)
def test_bad_settings_exit_2_naming_what_to_fix(
    manifest: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    code = main(["train", "--data", str(manifest), "--out", str(tmp_path), *SMALL, *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_every_shipped_config_loads() -> None:
    for path in CONFIGS.glob("*.toml"):
        load_config(path)


def test_learning_rate_warms_up_then_decays_along_a_cosine() -> None:
    config = TrainConfig(lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(step, 100, 10, config) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[55] == pytest.approx(0.55)  # halfway through the decay: mean of 1.0 and 0.1
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_a_failed_camera_in_the_training_data_is_masked_and_training_goes_on(
    manifest: Path, tmp_path: Path
) -> None:
    """The one preprocessing path checks training clips too: a black camera is masked like a
    dropped view, not learned from (and not a reason to stop a run)."""
    plan = next(p for p in plan_clips(TINY) if p.split == "train")
    broken = write_failed_clip(plan, TINY, {"left90": "black"}, tmp_path / "data")
    records = [*read_manifest(manifest), broken]
    data = write_manifest(records, tmp_path / "data" / "manifest.jsonl")
    _train(data, tmp_path / "run", "--epochs", "1")
    _, meta = load_model(tmp_path / "run" / "last.pt")
    assert meta.preprocess.camera_checks and meta.preprocess.allow_missing_views
    clip = ClipDataset([broken], meta.labels, meta.preprocess, None).clip(0)
    assert [(f.view, f.reason) for f in clip.views_dropped] == [("left90", "black")]
    assert clip.view_mask.tolist() == [True, False, True]
    unchecked = dataclasses.replace(meta.preprocess, camera_checks=False)
    assert ClipDataset([broken], meta.labels, unchecked, None).clip(0).view_mask.all()
