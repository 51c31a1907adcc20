"""`mplstm train`: train a model on a manifest from a TOML config plus flag overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

_DESCRIPTION = """\
Train a multi-view model. Settings come from a TOML config ([model], [data], [train],
[augment]; see configs/), then --set SECTION.KEY=VALUE, then the flags below. Clips are
decoded once through the core preprocessing path and cached as uint8 .npz. OUT gets
last.pt and best.pt (best validation accuracy; self-describing checkpoints), config.json,
history.json, curves.png, and eval-test/ (evaluation of best.pt on the test split).
Runs data-parallel unchanged under torchrun (train.batch_size is the global batch, split
over the processes; rank 0 writes everything): see docs/training.md."""


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training options (torch-free, so `mplstm --help` stays fast)."""
    parser.add_argument(
        "--data", type=Path, metavar="MANIFEST", help="data set manifest (.jsonl/.csv)"
    )
    parser.add_argument("--config", type=Path, metavar="TOML", help="training config file")
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder for checkpoints and plots"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set model.hidden_size=64; repeatable",
    )
    parser.add_argument("--model", help="model family (model.name), e.g. mplstm, late_fusion")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--batch-size", type=int, help="train.batch_size")
    parser.add_argument("--lr", type=float, help="train.lr (peak learning rate)")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--workers", type=int, help="train.workers: DataLoader processes")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CHECKPOINT",
        help="continue a stopped run (default OUT/last.pt) with its saved config; 'auto': "
        "continue OUT/last.pt when it exists (the command's config must match it), else start "
        "a new run, for jobs that rerun the same command after a failure",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop cleanly once this much training time has passed (after the current "
        "batch), saving a resumable checkpoint; 0 stops after one step",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--eval-split",
        default="test",
        help="split to evaluate best.pt on after training; 'none' to skip (default test)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits on the others (a collective, the "
        "start-up) before failing, e.g. when a peer died (default 600)",
    )
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a model on a manifest (TOML config, checkpoints, curves, evaluation)",
        description=_DESCRIPTION,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; user errors (bad config, manifest, checkpoint) exit with status 2."""
    from mplstm.cli import CommandError
    from mplstm.core.manifest import ManifestError
    from mplstm.training.checkpoint import CheckpointError
    from mplstm.training.data import DataError
    from mplstm.training.distributed import DistributedError
    from mplstm.training.train import ConfigError, main

    user_errors = (
        ConfigError,
        DataError,
        CheckpointError,
        ManifestError,
        DistributedError,
        FileNotFoundError,
    )
    try:
        main(args)
    except user_errors as exc:
        raise CommandError(str(exc)) from exc
    return 0
