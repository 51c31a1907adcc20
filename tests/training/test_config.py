"""The training config on its own: torch-free, its precedence, and errors that name the key."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mplstm.training.config import (
    ConfigError,
    TrainConfig,
    add_train_arguments,
    check_train_config,
    flag_overrides,
    load_config,
)

TRAINING = Path(__file__).resolve().parents[2] / "mplstm" / "training"


def _parse(*argv: str) -> argparse.Namespace:
    return add_train_arguments(argparse.ArgumentParser()).parse_args(["--out", "run", *argv])


def test_config_module_imports_without_torch() -> None:
    code = (
        "import sys, mplstm.training.config\n"
        "assert 'torch' not in sys.modules, 'mplstm.training.config imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_training_never_imports_the_cli() -> None:
    for path in TRAINING.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n.startswith("mplstm.cli") for n in names), path


def test_toml_then_set_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[model]\nname = "late_fusion"\nhidden_size = 32\n'
        "[train]\nepochs = 5\nseed = 1\nlr = 0.01\n"
        "[data]\nframes = 12\n",
        encoding="utf-8",
    )
    # The flag comes first on the command line and still wins over --set.
    args = _parse(
        "--epochs", "7",
        "--config", str(toml),
        "--set", "train.epochs=6",
        "--set", "train.seed=2",
        "--set", "train.seed=3",
        "--set", "data.mean=[0.5]",
        "--model", "mplstm",
    )  # fmt: skip
    config = load_config(args.config, flag_overrides(args))
    assert config.train.epochs == 7  # flag > --set > file
    assert config.train.seed == 3  # --set > file; the later --set wins
    assert config.train.lr == 0.01  # file > default
    assert config.train.batch_size == TrainConfig().batch_size  # untouched: default
    assert config.model == {"name": "mplstm", "hidden_size": 32, "view_dropout": 0.2}
    assert config.data.frames == 12 and config.data.mean == [0.5]


def test_shortcut_flags_are_set_items_of_their_keys() -> None:
    args = _parse("--model", "late_fusion", "--batch-size", "8", "--lr", "1e-4", "--workers", "2")
    assert flag_overrides(args) == [
        'model.name="late_fusion"',
        "train.batch_size=8",
        "train.lr=0.0001",
        "train.workers=2",
    ]
    config = load_config(None, flag_overrides(args))
    assert (config.model["name"], config.train.batch_size) == ("late_fusion", 8)
    assert (config.train.lr, config.train.workers) == (1e-4, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], "unknown key(s) ['epoch'] in [train]; known: amp, batch_size"),
        (["trian.epochs=3"], "unknown config section(s) ['trian']; use model, data"),
        (["augment.flip=sideways"], "[augment]: augment.flip must be one of"),
        (["augment.crop_pad=-1"], "[augment]: augment.crop_pad and augment.time_mask"),
        (["data.frames"], "override 'data.frames' must look like section.key=value"),
        (["frames=3"], "override 'frames=3' must look like section.key=value"),
    ],
)
def test_bad_override_is_a_config_error_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, overrides)
    assert message in str(excinfo.value)


def test_bad_file_is_a_config_error_naming_the_file_or_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config .*broken\.toml is not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"cannot read config .*missing\.toml"):
        load_config(tmp_path / "missing.toml")
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text("[data]\nframes = 8\nhieght = 32\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['hieght'\] in \[data\]"):
        load_config(misspelt)


def test_loop_settings_no_run_can_start_with_are_refused_by_name() -> None:
    check_train_config(TrainConfig())
    with pytest.raises(ConfigError, match=r"train\.epochs and train\.batch_size must be >= 1"):
        check_train_config(TrainConfig(epochs=0))
    with pytest.raises(ConfigError, match="view_dropout_start_epoch must be >= 0, got -2"):
        check_train_config(TrainConfig(view_dropout_start_epoch=-2))


def test_train_module_parser_matches_the_cli() -> None:
    from mplstm.cli import build_parser
    from mplstm.training.train import get_args_parser

    argv = ["--out", "run", "--epochs", "2", "--set", "train.seed=1", "--resume", "auto"]
    direct = vars(get_args_parser().parse_args(argv))
    via_cli = vars(build_parser().parse_args(["train", *argv]))
    assert {k: v for k, v in via_cli.items() if k not in ("command", "func")} == direct
